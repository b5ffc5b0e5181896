// One exchange with a character: send typed text or a recording, then show (and play) the reply
// as it streams, each sentence's text revealed when its audio starts and performed as it sounds.
import { api, errorFrom, ServerError } from './api.js';
import { debug } from './debug.js';
import { readEvents } from './event-stream.js';
import { base64Bytes } from './player.js';
import { recordError, setState, setStatus } from './status.js';

const STREAM_FORMAT = 'events';

export class Exchanges {
  constructor({ player, conversation, stage }) {
    this.player = player;
    this.conversation = conversation;
    this.stage = stage;
    this.current = null; // the exchange in progress: {abort}
  }

  /** Drop the exchange in progress: its request, its playback, what it would still show. */
  stop() {
    if (this.current) this.current.abort.abort();
    this.current = null;
    this.player.stop();
    this.stage.stop();
    if (debug.state !== 'loading' && debug.state !== 'recording') setState('idle');
  }

  /** Send `text`, or `recording` ({blob, filename, seconds}), to `speaker` (shown as `label`) in
   * conversation `session`, the whole reply in mood `style` if one is given; resolves once the
   * reply has been shown (its audio may still sound). */
  async send({ speaker, label, session, text, recording, textOnly, style = null }) {
    this.stop();
    const player = this.player;
    if (!textOnly) player.unlock(); // inside the click: the browser allows audio from here on
    debug.sessionId = session;
    const me = (this.current = { abort: new AbortController() });
    const current = () => this.current === me;

    const mine = this.conversation.add('user', 'You');
    if (recording) {
      mine.addSentence(`voice message (${recording.seconds.toFixed(1)} s)`).classList.add('voice-note');
    } else {
      mine.addSentence(text);
    }
    const reply = this.conversation.add('assistant', label);
    reply.pending = true;
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
      // The recording goes as the browser encoded it: the server decodes WebM, Ogg and MP4.
      body = new FormData();
      body.append('audio', recording.blob, recording.filename);
      body.append('speaker', speaker);
      body.append('format', format);
      body.append('session_id', session);
      if (style) body.append('style', style);
    } else {
      body = JSON.stringify({ input: text, speaker, format, session_id: session, ...(style ? { style } : {}) });
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
            mine.replaceText(event.transcript.trim() || '(nothing heard)').classList.add('voice-note');
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
            const span = reply.addSentence(event.text, title);
            if (event.style) span.dataset.style = event.style;
            if (sounding) {
              reply.highlightWhileSounding(span, outcome.endAt, player);
              this.stage.cue({ speaker, span, sentence: event, startAt: outcome.startAt, endAt: outcome.endAt });
            }
            shown += 1;
          });
        } else if (event.type === 'done') {
          finished = true;
          latency.totalMs = performance.now() - latency.sentAt;
          later(null, () => {
            if (!shown && event.text) reply.addSentence(event.text);
            if (event.finish_reason === 'length') reply.element.title = 'The reply was cut at its length limit.';
            reply.pending = false;
            reply.showLatency(latency);
          });
        } else if (event.type === 'error') {
          finished = true;
          const error = event.error || { type: 'error', message: 'the reply failed' };
          later(null, () => {
            reply.addError(recordError(error));
            setStatus(error.message, true);
          });
        }
      });
      if (!finished && current()) {
        later(null, () => reply.addError(recordError({ type: 'stream_ended', message: 'the reply ended early' })));
      }
    } catch (error) {
      if (error.name === 'AbortError' || !current()) return;
      const shownError = recordError(error);
      later(null, () => {
        reply.addError(shownError);
        setStatus(shownError.message, true);
      });
    }

    if (!current()) return;
    if (player.playing || spoken) setState('playing');
    await reveal;
    if (!current()) return;
    const finish = () => {
      this.current = null;
      setState('idle');
    };
    if (player.playing) {
      setState('playing');
      player.onIdle = () => {
        player.onIdle = null;
        if (current()) finish();
      };
    } else {
      finish();
    }
  }
}
