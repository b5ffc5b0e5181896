// The chat2audio web page: pick a character, talk to it by text or by voice, and hear each sentence
// of its reply while the rest is still being written. Plain JS with no build step and no network
// access beyond this server, so the page works offline.
'use strict';

(() => {
  // Read by the end-to-end test (tests/e2e/web/drive.mjs) to see what really happened.
  const debug = (window.chat2audioDebug = {
    state: 'loading', // loading | idle | recording | waiting | streaming | playing
    sentencesStarted: 0, // sentences whose audio began to sound
    sentencesReceived: 0,
    audioReceived: 0, // sentences that came with audio
    requests: 0,
    lastError: null, // {type, message, status?}
    sessionId: null,
    scheduled: [], // recent sentences' {queuedAt, startAt, duration} on the AudioContext clock
    highlighted: [], // the last reply's sentences, in the order each was highlighted as it sounded
    latency: null, // the last reply's {firstAudioMs, firstTextMs, totalMs}, as shown under it
    selected: null, // the character talked to
  });

  const STREAM_FORMAT = 'events';
  const SAMPLE_RATE_UPLOAD = 16000; // speech needs no more, and the upload stays small
  const MAX_RECORDING_S = 60;
  const MIN_RECORDING_S = 0.3;
  const SCHEDULE_LEAD_S = 0.05; // time to hand a buffer to the audio thread before it is due

  const $ = (id) => document.getElementById(id);
  const els = {
    characters: $('characters'),
    current: $('current'),
    newConversation: $('new-conversation'),
    conversation: $('conversation'),
    status: $('status'),
    form: $('composer'),
    input: $('input'),
    send: $('send'),
    mic: $('mic'),
    textOnly: $('text-only'),
    apiKey: $('api-key'),
  };

  const store = {
    get: (key) => { try { return localStorage.getItem(key); } catch { return null; } },
    set: (key, value) => { try { localStorage.setItem(key, value); } catch { /* private mode: keep going */ } },
  };

  const speakers = new Map(); // id -> SpeakerInfo
  let selected = null; // id of the character talked to
  let textOnlyWanted = false; // the user's own choice, kept while a voiceless character forces text
  let turn = null; // the exchange in progress: {id, abort}
  let turnCounter = 0;

  function setState(state) {
    debug.state = state;
    document.body.dataset.state = state;
    const busy = state === 'waiting' || state === 'streaming' || state === 'loading';
    els.send.disabled = busy || state === 'recording';
    els.mic.disabled = busy;
  }

  function setStatus(text, isError = false) {
    els.status.textContent = text || '';
    els.status.classList.toggle('error', Boolean(isError));
  }

  function recordError(error) {
    debug.lastError = { type: error.type || 'client_error', message: error.message || String(error), status: error.status };
    return debug.lastError;
  }

  // -- HTTP ---------------------------------------------------------------------------------

  class ServerError extends Error {
    constructor(status, type, message) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  function api(path, init = {}) {
    const headers = new Headers(init.headers || {});
    const key = store.get('chat2audio.apiKey');
    if (key) headers.set('Authorization', `Bearer ${key}`);
    return fetch(path, { ...init, headers });
  }

  async function errorFrom(response) {
    let type = `http_${response.status}`;
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && body.error) {
        type = body.error.type || type;
        message = body.error.message || message;
      } else if (body && body.detail) {
        message = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
      }
    } catch { /* not JSON: keep the status line */ }
    return new ServerError(response.status, type, message);
  }

  // -- server-sent events over fetch (EventSource cannot POST) -------------------------------

  /** Feed it the body's byte chunks; it calls onEvent with each complete event's parsed JSON,
   * whatever the chunk boundaries (mid-line, mid-UTF-8 character, mid-"\r\n"). */
  function sseParser(onEvent) {
    const decoder = new TextDecoder();
    let buffer = '';
    let scanned = 0; // no blank line before this offset: base64 audio makes events large

    function dispatch(block) {
      const data = block
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) onEvent(JSON.parse(data));
    }

    function drain() {
      for (;;) {
        const end = buffer.indexOf('\n\n', scanned);
        if (end < 0) {
          scanned = Math.max(0, buffer.length - 1);
          return;
        }
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        scanned = 0;
        dispatch(block);
      }
    }

    function normalize(text) {
      // A "\r" at the end may be the first half of "\r\n": hold it back for the next chunk.
      let held = '';
      if (text.endsWith('\r')) {
        held = '\r';
        text = text.slice(0, -1);
      }
      return [text.replace(/\r\n?/g, '\n'), held];
    }

    let pendingCr = '';
    return {
      push(bytes) {
        const [text, held] = normalize(pendingCr + decoder.decode(bytes, { stream: true }));
        pendingCr = held;
        buffer += text;
        drain();
      },
      end() {
        const [text] = normalize(pendingCr + decoder.decode());
        pendingCr = '';
        buffer += text;
        drain();
        if (buffer.trim()) dispatch(buffer);
        buffer = '';
      },
    };
  }

  async function readEvents(response, onEvent) {
    const parser = sseParser(onEvent);
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.end();
  }

  // -- playback: one AudioContext, sentences scheduled back to back ---------------------------

  class Player {
    constructor() {
      this.ctx = null;
      this.nextTime = 0;
      this.chain = Promise.resolve(); // decodes finish in arrival order
      this.sources = new Set();
      this.timers = new Set();
      this.epoch = 0; // bumped by stop(): callbacks of older epochs do nothing
      this.onIdle = null;
    }

    /** Create or resume the context. Call it from a click: browsers start audio only after one. */
    unlock() {
      if (!this.ctx) {
        const Context = window.AudioContext || window.webkitAudioContext;
        this.ctx = new Context();
      }
      if (this.ctx.state === 'suspended') this.ctx.resume().catch(() => {});
    }

    get playing() {
      return this.sources.size > 0;
    }

    /** Queue one sentence's WAV. Resolves when it starts to sound ({blocked: true} if the
     * browser keeps audio off, {error} if it cannot be decoded), so its text shows just then. */
    enqueue(wavBytes) {
      const epoch = this.epoch;
      // Decode and schedule in arrival order; the next one is scheduled as soon as this one is,
      // long before this one ends, so there is no gap between sentences.
      const scheduled = this.chain.then(async () => {
        if (epoch !== this.epoch) return { stale: true };
        this.unlock();
        let buffer;
        try {
          buffer = await this.ctx.decodeAudioData(wavBytes.buffer);
        } catch (error) {
          return { error };
        }
        if (epoch !== this.epoch) return { stale: true };
        const ctx = this.ctx;
        const startAt = Math.max(ctx.currentTime + SCHEDULE_LEAD_S, this.nextTime);
        const source = ctx.createBufferSource();
        source.buffer = buffer;
        source.connect(ctx.destination);
        source.onended = () => {
          this.sources.delete(source);
          if (!this.sources.size && this.onIdle) this.onIdle();
        };
        source.start(startAt);
        this.sources.add(source);
        debug.scheduled.push({ queuedAt: ctx.currentTime, startAt, duration: buffer.duration });
        if (debug.scheduled.length > 50) debug.scheduled.shift();
        this.nextTime = startAt + buffer.duration;
        return { startAt, endAt: startAt + buffer.duration };
      });
      this.chain = scheduled.then(() => undefined, () => undefined);
      return scheduled.then((outcome) => {
        if (outcome.stale) return new Promise(() => {}); // stopped: never shown
        return outcome.error ? outcome : this.whenAudible(outcome.startAt, epoch).then((heard) => ({ ...heard, endAt: outcome.endAt }));
      });
    }

    /** Run `fn` when the context's clock reaches `endAt` (nothing if playback is stopped first). */
    at(endAt, fn) {
      const epoch = this.epoch;
      const check = () => {
        if (epoch !== this.epoch) return;
        const wait = endAt - this.ctx.currentTime;
        if (wait <= 0.005 || this.ctx.state !== 'running') fn();
        else this.later(check, wait * 1000);
      };
      check();
    }

    whenAudible(startAt, epoch) {
      return new Promise((resolve) => {
        let suspendedChecks = 0;
        const check = () => {
          if (epoch !== this.epoch) return;
          const ctx = this.ctx;
          if (ctx.state !== 'running') {
            // A new context may take a moment to start; one that stays suspended is the
            // autoplay policy at work: its clock is frozen, so show the text without sound.
            if (++suspendedChecks > 20) resolve({ blocked: true });
            else this.later(check, 50);
            return;
          }
          const wait = startAt - ctx.currentTime;
          if (wait <= 0.005) resolve({});
          else this.later(check, wait * 1000);
        };
        check();
      });
    }

    later(fn, ms) {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        fn();
      }, ms);
      this.timers.add(timer);
    }

    stop() {
      this.epoch += 1;
      for (const timer of this.timers) clearTimeout(timer);
      this.timers.clear();
      for (const source of this.sources) {
        source.onended = null;
        try { source.stop(); } catch { /* not started yet */ }
      }
      this.sources.clear();
      this.onIdle = null;
      this.nextTime = 0;
      this.chain = Promise.resolve();
    }
  }

  const player = new Player();

  function base64Bytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // -- recording: microphone -> 16-bit mono WAV (the server decodes WAV, not MediaRecorder's webm)

  const CAPTURE_WORKLET = `
    class Capture extends AudioWorkletProcessor {
      constructor() { super(); this.batch = new Float32Array(4096); this.filled = 0; }
      process(inputs) {
        const channels = inputs[0];
        if (channels && channels.length) {
          const frames = channels[0].length;
          for (let i = 0; i < frames; i += 1) {
            let sum = 0;
            for (const channel of channels) sum += channel[i];
            this.batch[this.filled++] = sum / channels.length;
            if (this.filled === this.batch.length) {
              this.port.postMessage(this.batch, [this.batch.buffer]);
              this.batch = new Float32Array(4096);
              this.filled = 0;
            }
          }
        }
        return true;
      }
    }
    registerProcessor('chat2audio-capture', Capture);
  `;

  class Recorder {
    async start() {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error(window.isSecureContext
          ? 'this browser cannot record audio'
          : 'the microphone needs a secure page: open it as https:// or http://localhost');
      }
      this.chunks = [];
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      try {
        const Context = window.AudioContext || window.webkitAudioContext;
        this.ctx = new Context();
        const url = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: 'text/javascript' }));
        try {
          await this.ctx.audioWorklet.addModule(url);
        } finally {
          URL.revokeObjectURL(url);
        }
        this.rate = this.ctx.sampleRate;
        const source = this.ctx.createMediaStreamSource(this.stream);
        const node = new AudioWorkletNode(this.ctx, 'chat2audio-capture');
        node.port.onmessage = (message) => this.chunks.push(message.data);
        // A silent path to the destination keeps the graph pulling in every browser.
        const mute = this.ctx.createGain();
        mute.gain.value = 0;
        source.connect(node).connect(mute).connect(this.ctx.destination);
        this.startedAt = performance.now();
      } catch (error) {
        this.release();
        throw error;
      }
    }

    get seconds() {
      return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
    }

    /** Stop and return {blob, seconds} of 16-bit mono WAV. */
    async stop() {
      // Let the worklet hand over what it still holds in its last message.
      await new Promise((resolve) => setTimeout(resolve, 50));
      this.release();
      const samples = concat(this.chunks);
      const rate = Math.min(this.rate, SAMPLE_RATE_UPLOAD);
      const mono = downsample(samples, this.rate, rate);
      return { blob: new Blob([encodeWav(mono, rate)], { type: 'audio/wav' }), seconds: mono.length / rate };
    }

    release() {
      if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
      if (this.ctx) this.ctx.close().catch(() => {});
      this.stream = null;
      this.ctx = null;
    }
  }

  function concat(chunks) {
    const out = new Float32Array(chunks.reduce((n, chunk) => n + chunk.length, 0));
    let at = 0;
    for (const chunk of chunks) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }

  /** Average each output sample's span of input: a box filter, enough against aliasing for speech. */
  function downsample(samples, from, to) {
    if (from === to) return samples;
    const ratio = from / to;
    const out = new Float32Array(Math.floor(samples.length / ratio));
    for (let i = 0; i < out.length; i += 1) {
      const start = Math.floor(i * ratio);
      const end = Math.min(samples.length, Math.max(start + 1, Math.floor((i + 1) * ratio)));
      let sum = 0;
      for (let j = start; j < end; j += 1) sum += samples[j];
      out[i] = sum / (end - start);
    }
    return out;
  }

  function encodeWav(samples, rate) {
    const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
    const ascii = (at, text) => [...text].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
    ascii(0, 'RIFF');
    view.setUint32(4, 36 + samples.length * 2, true);
    ascii(8, 'WAVE');
    ascii(12, 'fmt ');
    view.setUint32(16, 16, true); // fmt chunk size
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true); // bytes per second
    view.setUint16(32, 2, true); // block align
    view.setUint16(34, 16, true); // bits per sample
    ascii(36, 'data');
    view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i += 1) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return view.buffer;
  }

  // -- conversation view ---------------------------------------------------------------------

  function speakerLabel(id) {
    const info = speakers.get(id);
    return (info && info.display_name) || id;
  }

  function addBubble(role, label) {
    const bubble = document.createElement('div');
    bubble.className = `bubble ${role}`;
    bubble.dataset.role = role;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = label;
    const body = document.createElement('span');
    body.className = 'body';
    bubble.append(who, body);
    els.conversation.append(bubble);
    scrollDown();
    return { bubble, body };
  }

  function addSentence(view, text, title) {
    const span = document.createElement('span');
    span.className = 'sentence';
    span.textContent = text;
    if (title) span.title = title;
    view.body.append(span);
    view.bubble.classList.remove('pending');
    scrollDown();
    return span;
  }

  function addError(view, error) {
    const line = document.createElement('span');
    line.className = 'error';
    line.dataset.errorType = error.type || '';
    line.textContent = error.status ? `${error.message} (${error.status} ${error.type})` : error.message;
    view.bubble.append(line);
    view.bubble.classList.remove('pending');
    scrollDown();
  }

  /** Mark the sentence as the one sounding now (the one before it as spoken) until `endAt`. */
  function highlightWhileSounding(view, span, endAt) {
    for (const before of view.body.querySelectorAll('.sentence.speaking')) {
      before.classList.replace('speaking', 'spoken');
    }
    span.classList.add('speaking');
    debug.highlighted.push(span.textContent);
    player.at(endAt, () => span.classList.replace('speaking', 'spoken'));
  }

  function seconds(ms) {
    return `${(ms / 1000).toFixed(2)} s`;
  }

  /** "first audio 0.52 s · whole reply 3.10 s" under the reply: what this user waited for. */
  function showLatency(view, latency) {
    const parts = [];
    if (latency.firstAudioMs !== null) parts.push(`first audio ${seconds(latency.firstAudioMs)}`);
    else if (latency.firstTextMs !== null) parts.push(`first words ${seconds(latency.firstTextMs)}`);
    parts.push(`whole reply ${seconds(latency.totalMs)}`);
    const line = document.createElement('span');
    line.className = 'latency';
    line.textContent = parts.join(' · ');
    line.title = 'Time from sending to the first sentence that arrived, and to the end of the reply';
    view.bubble.append(line);
    debug.latency = { firstAudioMs: latency.firstAudioMs, firstTextMs: latency.firstTextMs, totalMs: latency.totalMs };
  }

  function scrollDown() {
    els.conversation.scrollTop = els.conversation.scrollHeight;
  }

  // -- sessions ------------------------------------------------------------------------------

  function newSessionId() {
    // crypto.randomUUID exists only on secure pages; getRandomValues works on plain http too.
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function sessionFor(speaker) {
    const key = `chat2audio.session.${speaker}`;
    let id = store.get(key);
    if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
      id = newSessionId();
      store.set(key, id);
    }
    return id;
  }

  async function showHistory(speaker) {
    const session = sessionFor(speaker);
    debug.sessionId = session;
    try {
      const response = await api(`/sessions/${encodeURIComponent(session)}?speaker=${encodeURIComponent(speaker)}`);
      if (!response.ok || selected !== speaker || debug.sessionId !== session) return;
      const { turns = [] } = await response.json();
      for (const past of turns) {
        const view = addBubble(past.role, past.role === 'user' ? 'You' : speakerLabel(speaker));
        addSentence(view, past.content);
      }
    } catch { /* history is a nicety: the conversation still works without it */ }
  }

  async function newConversation() {
    const speaker = selected;
    stopTurn();
    if (!speaker) return;
    const old = sessionFor(speaker);
    const fresh = newSessionId();
    store.set(`chat2audio.session.${speaker}`, fresh);
    debug.sessionId = fresh;
    els.conversation.replaceChildren();
    setStatus('');
    try {
      const response = await api(`/sessions/${encodeURIComponent(old)}`, { method: 'DELETE' });
      if (!response.ok && response.status !== 404) throw await errorFrom(response);
      setStatus('New conversation.');
    } catch (error) {
      const shown = recordError(error);
      setStatus(`Could not forget the old conversation: ${shown.message}`, true);
    }
  }

  // -- one exchange --------------------------------------------------------------------------

  function stopTurn() {
    if (turn) turn.abort.abort();
    turn = null;
    player.stop();
    if (debug.state !== 'loading' && debug.state !== 'recording') setState('idle');
  }

  /** Send text or a recording and show (and play) the reply as it streams. */
  async function converse({ text, recording }) {
    const speaker = selected;
    if (!speaker) {
      setStatus('Pick a character first.', true);
      return;
    }
    stopTurn();
    const textOnly = els.textOnly.checked;
    if (!textOnly) player.unlock(); // inside the click: the browser allows audio from here on
    const session = sessionFor(speaker);
    debug.sessionId = session;
    const me = (turn = { id: ++turnCounter, abort: new AbortController() });
    const current = () => turn === me;

    const mine = addBubble('user', 'You');
    if (recording) {
      const note = addSentence(mine, `voice message (${recording.seconds.toFixed(1)} s)`);
      note.classList.add('voice-note');
    } else {
      addSentence(mine, text);
    }
    const reply = addBubble('assistant', speakerLabel(speaker));
    reply.bubble.classList.add('pending');
    setStatus('');
    setState('waiting');
    debug.requests += 1;
    debug.highlighted = [];
    const latency = { sentAt: performance.now(), firstTextMs: null, firstAudioMs: null, totalMs: null };
    debug.latency = null;

    const format = textOnly ? 'text' : STREAM_FORMAT;
    let body;
    const headers = {};
    if (recording) {
      body = new FormData();
      body.append('audio', recording.blob, 'speech.wav');
      body.append('speaker', speaker);
      body.append('format', format);
      body.append('session_id', session);
    } else {
      body = JSON.stringify({ input: text, speaker, format, session_id: session });
      headers['Content-Type'] = 'application/json';
    }

    // Sentences are revealed strictly in order, each when its audio starts (text: at once).
    let reveal = Promise.resolve();
    const later = (wait, show) => {
      reveal = reveal.then(() => wait).then((outcome) => current() && show(outcome || {}));
      return reveal;
    };
    let shown = 0;
    let spoken = 0;
    let finished = false;

    try {
      const response = await api('/chat2audio', { method: 'POST', body, headers, signal: me.abort.signal });
      if (!response.ok) throw await errorFrom(response);
      const type = response.headers.get('content-type') || '';
      if (!type.startsWith('text/event-stream')) {
        throw new ServerError(response.status, 'unexpected_response', `expected an event stream, got ${type || 'nothing'}`);
      }
      if (current()) setState('streaming');
      await readEvents(response, (event) => {
        if (!current()) return;
        if (event.type === 'start') {
          if (recording && typeof event.transcript === 'string') {
            mine.body.replaceChildren();
            addSentence(mine, event.transcript.trim() || '(nothing heard)').classList.add('voice-note');
          }
        } else if (event.type === 'sentence') {
          debug.sentencesReceived += 1;
          const hasAudio = !textOnly && typeof event.audio_wav_base64 === 'string' && event.audio_wav_base64.length > 0;
          const title = event.speech_text ? `spoken as: ${event.speech_text}` : '';
          const elapsed = performance.now() - latency.sentAt;
          if (latency.firstTextMs === null) latency.firstTextMs = elapsed;
          if (hasAudio) {
            debug.audioReceived += 1;
            spoken += 1;
            if (latency.firstAudioMs === null) latency.firstAudioMs = elapsed;
          }
          const wait = hasAudio ? player.enqueue(base64Bytes(event.audio_wav_base64)) : null;
          later(wait, (outcome) => {
            const sounding = hasAudio && !outcome.blocked && !outcome.error;
            if (sounding) debug.sentencesStarted += 1;
            if (outcome.blocked) setStatus('The browser blocked audio: click the page, then send again.', true);
            if (outcome.error) recordError({ type: 'audio_decode', message: String(outcome.error) });
            const span = addSentence(reply, event.text, title);
            if (sounding) highlightWhileSounding(reply, span, outcome.endAt);
            shown += 1;
          });
        } else if (event.type === 'done') {
          finished = true;
          latency.totalMs = performance.now() - latency.sentAt;
          later(null, () => {
            if (!shown && event.text) addSentence(reply, event.text);
            if (event.finish_reason === 'length') reply.bubble.title = 'The reply was cut at its length limit.';
            reply.bubble.classList.remove('pending');
            showLatency(reply, latency);
          });
        } else if (event.type === 'error') {
          finished = true;
          const error = event.error || { type: 'error', message: 'the reply failed' };
          later(null, () => {
            addError(reply, recordError(error));
            setStatus(error.message, true);
          });
        }
      });
      if (!finished && current()) {
        later(null, () => addError(reply, recordError({ type: 'stream_ended', message: 'the reply ended early' })));
      }
    } catch (error) {
      if (error.name === 'AbortError' || !current()) return;
      const shownError = recordError(error);
      later(null, () => {
        addError(reply, shownError);
        setStatus(shownError.message, true);
      });
    }

    if (!current()) return;
    if (player.playing || spoken) setState('playing');
    await reveal;
    if (!current()) return;
    if (player.playing) {
      setState('playing');
      player.onIdle = () => {
        player.onIdle = null;
        if (current()) finishTurn();
      };
    } else {
      finishTurn();
    }

    function finishTurn() {
      turn = null;
      setState('idle');
    }
  }

  // -- wiring --------------------------------------------------------------------------------

  // -- the character picker ------------------------------------------------------------------

  const LANGUAGES = { zh: 'Chinese', en: 'English', ja: 'Japanese', ko: 'Korean', yue: 'Cantonese', auto: 'any language' };
  let portraitUrls = []; // object URLs of the portraits shown, released when the list is redrawn

  /** available: speaks; voiceless: its voice cannot load, it answers in text; broken: its file is. */
  function characterState(info) {
    if (!info) return 'available'; // not listed (removed meanwhile): the server will say
    if (info.available) return 'available';
    return info.can_chat ? 'voiceless' : 'broken';
  }

  function characterName(info) {
    return info.display_name || info.id;
  }

  function initials(info) {
    const name = characterName(info).trim();
    const words = name.split(/\s+/).filter(Boolean);
    const letters = words.length > 1 ? words[0][0] + words[1][0] : [...name].slice(0, /^[\x00-\x7f]/.test(name) ? 2 : 1).join('');
    return letters.toUpperCase();
  }

  function hue(id) {
    let h = 0;
    for (const c of id) h = (h * 31 + c.codePointAt(0)) % 360;
    return String(h);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function characterCard(info) {
    const state = characterState(info);
    const card = element('button', `character ${state}`);
    card.type = 'button';
    card.dataset.speakerId = info.id;
    card.dataset.state = state;
    card.setAttribute('role', 'radio');
    card.setAttribute('aria-checked', 'false');
    if (state === 'broken') card.setAttribute('aria-disabled', 'true');
    card.tabIndex = -1;

    const portrait = element('span', 'portrait', initials(info));
    portrait.setAttribute('aria-hidden', 'true');
    portrait.style.setProperty('--hue', hue(info.id));
    if (info.portrait_url) loadPortrait(portrait, info.portrait_url);

    const about = element('span', 'about');
    const heading = element('span', 'heading');
    heading.append(element('span', 'name', characterName(info)));
    if (info.language) heading.append(element('span', 'language', LANGUAGES[info.language] || info.language));
    about.append(heading);
    if (info.description) about.append(element('span', 'description', info.description));
    if (state !== 'available') {
      const why = state === 'voiceless' ? 'Cannot speak (text only)' : 'Cannot talk';
      about.append(element('span', 'reason', `${why}: ${info.reason || 'unavailable'}`));
      if (info.download_command) {
        const fix = element('span', 'fix', 'To give it its voice, run ');
        fix.append(element('code', '', info.download_command));
        about.append(fix);
      }
    }
    card.title = [characterName(info), info.description, info.reason].filter(Boolean).join('\n');
    card.append(portrait, about);
    return card;
  }

  /** Fetched, not linked, so that the API key goes with it. The initials stay if it fails. */
  async function loadPortrait(holder, url) {
    try {
      const response = await api(url);
      if (!response.ok) return;
      const source = URL.createObjectURL(await response.blob());
      portraitUrls.push(source);
      const image = new Image();
      image.alt = '';
      image.src = source;
      await image.decode();
      holder.replaceChildren(image);
      holder.classList.add('has-image');
    } catch { /* not an image the browser can show: keep the initials */ }
  }

  function cards() {
    return [...els.characters.querySelectorAll('.character')];
  }

  /** Talk to `id` from now on: its history, its voice (or text only if it has none). */
  function selectCharacter(id, { focus = false } = {}) {
    const info = speakers.get(id);
    const state = characterState(info);
    const card = cards().find((node) => node.dataset.speakerId === id);
    if (state === 'broken') {
      setStatus(`${characterName(info)} cannot talk: ${info.reason}`, true);
      if (card && focus) card.focus();
      return;
    }
    const changed = selected !== id;
    for (const node of cards()) {
      const mine = node === card;
      node.setAttribute('aria-checked', String(mine));
      node.tabIndex = mine ? 0 : -1;
    }
    if (card && focus) card.focus();
    selected = debug.selected = id;
    store.set('chat2audio.speaker', id);
    const voiceless = state === 'voiceless';
    els.textOnly.checked = voiceless || textOnlyWanted;
    els.textOnly.disabled = voiceless;
    const name = info ? characterName(info) : id;
    els.current.textContent = voiceless ? `${name} · text only` : name;
    if (!changed) return;
    stopTurn();
    els.conversation.replaceChildren();
    setStatus(voiceless ? `${name} cannot speak on this server, so its replies come as text. Why: ${info.reason}` : '');
    showHistory(id);
  }

  function renderCharacters(list) {
    for (const url of portraitUrls) URL.revokeObjectURL(url);
    portraitUrls = [];
    speakers.clear();
    els.characters.replaceChildren();
    for (const info of list) {
      speakers.set(info.id, info);
      els.characters.append(characterCard(info));
    }
  }

  async function loadSpeakers() {
    setState('loading');
    try {
      const response = await api('/speakers');
      if (!response.ok) throw await errorFrom(response);
      const { speakers: list } = await response.json();
      selected = null;
      renderCharacters(list);
      const saved = store.get('chat2audio.speaker');
      const talking = list.filter((info) => characterState(info) !== 'broken').map((info) => info.id);
      const speaking = list.filter((info) => info.available).map((info) => info.id);
      const choice = talking.includes(saved) ? saved : speaking[0] || talking[0];
      if (choice) {
        selectCharacter(choice);
        if (!speaking.length) setStatus('No character can speak on this server yet: each card says why.', true);
      } else {
        const first = cards()[0];
        if (first) first.tabIndex = 0;
        els.current.textContent = '';
        setStatus(list.length ? 'No character can talk: each card says why.' : 'The server has no characters.', true);
      }
      setState('idle');
    } catch (error) {
      const shown = recordError(error);
      els.characters.replaceChildren(element('p', 'loading', 'could not load the characters'));
      setStatus(`Could not load the characters: ${shown.message}`, true);
      setState('idle');
      if (error.status === 401) els.apiKey.closest('details').open = true;
    }
  }

  let recorder = null;
  let recordingTimer = null;

  async function toggleRecording() {
    if (recorder) {
      const active = recorder;
      recorder = null;
      clearTimeout(recordingTimer);
      els.mic.setAttribute('aria-pressed', 'false');
      setState('idle');
      const recording = await active.stop();
      if (recording.seconds < MIN_RECORDING_S) {
        setStatus('That was too short: click the microphone, speak, then click it again.', true);
        return;
      }
      await converse({ recording });
      return;
    }
    stopTurn();
    player.unlock();
    const next = new Recorder();
    try {
      await next.start();
    } catch (error) {
      const message = error.name === 'NotAllowedError' ? 'microphone permission was denied' : error.message;
      recordError({ type: 'microphone', message });
      setStatus(`Cannot record: ${message}`, true);
      return;
    }
    recorder = next;
    els.mic.setAttribute('aria-pressed', 'true');
    setState('recording');
    setStatus('Recording… click the microphone again to send.');
    recordingTimer = setTimeout(() => recorder === next && toggleRecording(), MAX_RECORDING_S * 1000);
  }

  els.form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = els.input.value.trim();
    if (!text || els.send.disabled) return;
    els.input.value = '';
    converse({ text });
  });

  els.input.addEventListener('keydown', (event) => {
    // isComposing: Enter also confirms a CJK input-method candidate; that must not send.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });

  els.mic.addEventListener('click', () => toggleRecording());
  els.newConversation.addEventListener('click', () => newConversation());

  els.characters.addEventListener('click', (event) => {
    const card = event.target.closest('.character');
    if (card) selectCharacter(card.dataset.speakerId);
  });

  // One tab stop for the whole list; arrows move between characters, as in any radio group.
  els.characters.addEventListener('keydown', (event) => {
    const all = cards();
    const at = all.indexOf(document.activeElement);
    if (at < 0) return;
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 }[event.key];
    let next = null;
    if (step) next = all[(at + step + all.length) % all.length];
    else if (event.key === 'Home') next = all[0];
    else if (event.key === 'End') next = all.at(-1);
    if (!next) return;
    event.preventDefault();
    for (const node of all) node.tabIndex = node === next ? 0 : -1;
    next.focus();
    if (characterState(speakers.get(next.dataset.speakerId)) !== 'broken') selectCharacter(next.dataset.speakerId);
  });

  els.textOnly.addEventListener('change', () => {
    if (!els.textOnly.disabled) textOnlyWanted = els.textOnly.checked;
  });

  els.apiKey.value = store.get('chat2audio.apiKey') || '';
  els.apiKey.addEventListener('change', () => {
    store.set('chat2audio.apiKey', els.apiKey.value.trim());
    loadSpeakers();
  });

  loadSpeakers();
})();
