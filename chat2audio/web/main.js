// The chat2audio web page: pick a character, talk to it by text or by voice, and hear each sentence
// of its reply while the rest is still being written. Plain ES modules with no build step and no
// network access beyond this server, so the page works offline. This module wires them together.
import { API_KEY_STORAGE, api, errorFrom } from './api.js';
import { CharacterPicker, characterName, characterState } from './characters.js';
import { Conversation } from './conversation.js';
import { debug } from './debug.js';
import { Exchanges } from './exchange.js';
import { Player } from './player.js';
import { Recorder } from './recorder.js';
import { fetchHistory, forgetSession, sessionFor, startNewSession } from './sessions.js';
import { Stage } from './stage.js';
import { recordError, setState, setStatus } from './status.js';
import { storage } from './storage.js';

const SPEAKER_STORAGE = 'chat2audio.speaker';
const MAX_RECORDING_S = 60;
const MIN_RECORDING_S = 0.3;

const $ = (id) => document.getElementById(id);
const els = {
  current: $('current'),
  newConversation: $('new-conversation'),
  form: $('composer'),
  input: $('input'),
  send: $('send'),
  mic: $('mic'),
  textOnly: $('text-only'),
  mood: $('mood'),
  apiKey: $('api-key'),
};

const player = new Player();
const conversation = new Conversation($('conversation'));
const picker = new CharacterPicker($('characters'), { onPick: (id) => selectCharacter(id) });
const stage = new Stage({ player, cardOf: (id) => picker.cardOf(id) });
const exchanges = new Exchanges({ player, conversation, stage });
let selected = null; // id of the character talked to
let textOnlyWanted = false; // the user's own choice, kept while a voiceless character forces text

function speakerLabel(id) {
  const info = picker.info(id);
  return info ? characterName(info) : id;
}

/** Talk to `id` from now on: its history, its voice (or text only if it has none). Resolves once
 * its history is shown (at once if it was selected already). */
function selectCharacter(id, { focus = false } = {}) {
  const info = picker.info(id);
  const state = characterState(info);
  if (state === 'broken') {
    setStatus(`${characterName(info)} cannot talk: ${info.reason}`, true);
    if (focus) picker.focus(id);
    return;
  }
  const changed = selected !== id;
  picker.check(id, { focus });
  selected = debug.selected = id;
  storage.set(SPEAKER_STORAGE, id);
  const voiceless = state === 'voiceless';
  els.textOnly.checked = voiceless || textOnlyWanted;
  els.textOnly.disabled = voiceless;
  if (changed) offerMoods(voiceless ? [] : (info && info.styles) || []);
  const name = speakerLabel(id);
  els.current.textContent = voiceless ? `${name} · text only` : name;
  if (!changed) return;
  exchanges.stop();
  conversation.clear();
  setStatus(voiceless ? `${name} cannot speak on this server, so its replies come as text. Why: ${info.reason}` : '');
  return showHistory(id);
}

async function showHistory(speaker) {
  const session = sessionFor(speaker);
  debug.sessionId = session;
  try {
    const turns = await fetchHistory(session, speaker);
    if (!turns || selected !== speaker || debug.sessionId !== session) return;
    for (const past of turns) {
      conversation.add(past.role, past.role === 'user' ? 'You' : speakerLabel(speaker)).addSentence(past.content);
    }
  } catch { /* history is a nicety: the conversation still works without it */ }
}

async function newConversation() {
  const speaker = selected;
  exchanges.stop();
  if (!speaker) return;
  const { old, fresh } = startNewSession(speaker);
  debug.sessionId = fresh;
  conversation.clear();
  setStatus('');
  try {
    await forgetSession(old);
    setStatus('New conversation.');
  } catch (error) {
    setStatus(`Could not forget the old conversation: ${recordError(error).message}`, true);
  }
}

async function loadSpeakers() {
  setState('loading');
  try {
    const response = await api('/speakers');
    if (!response.ok) throw await errorFrom(response);
    const { speakers: list } = await response.json();
    selected = null;
    picker.render(list);
    const saved = storage.get(SPEAKER_STORAGE);
    const talking = list.filter((info) => characterState(info) !== 'broken').map((info) => info.id);
    const speaking = list.filter((info) => info.available).map((info) => info.id);
    const choice = talking.includes(saved) ? saved : speaking[0] || talking[0];
    if (choice) {
      await selectCharacter(choice); // the page turns idle with the conversation on screen
      if (!speaking.length) setStatus('No character can speak on this server yet: each card says why.', true);
    } else {
      els.current.textContent = '';
      setStatus(list.length ? 'No character can talk: each card says why.' : 'The server has no characters.', true);
    }
    setState('idle');
  } catch (error) {
    const shown = recordError(error);
    picker.showMessage('could not load the characters');
    setStatus(`Could not load the characters: ${shown.message}`, true);
    setState('idle');
    if (error.status === 401) els.apiKey.closest('details').open = true;
  }
}

/** The moods (styles) `styles` in the mood picker, none picked: shown only for a character that has some. */
function offerMoods(styles) {
  const options = styles.map((name) => new Option(name, name));
  els.mood.replaceChildren(new Option('its own choice', ''), ...options);
  els.mood.closest('label').hidden = !styles.length;
}

function send({ text, recording }) {
  const speaker = selected;
  if (!speaker) {
    setStatus('Pick a character first.', true);
    return;
  }
  const session = sessionFor(speaker);
  const style = els.mood.closest('label').hidden ? null : els.mood.value || null;
  exchanges.send({ speaker, label: speakerLabel(speaker), session, text, recording, textOnly: els.textOnly.checked, style });
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
    let recording;
    try {
      recording = await active.stop();
    } catch (error) {
      setStatus(`Cannot record: ${recordError({ type: 'microphone', message: error.message }).message}`, true);
      return;
    }
    debug.upload = { type: recording.blob.type, bytes: recording.blob.size, seconds: recording.seconds };
    if (recording.seconds < MIN_RECORDING_S) {
      setStatus('That was too short: click the microphone, speak, then click it again.', true);
      return;
    }
    send({ recording });
    return;
  }
  exchanges.stop();
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
  send({ text });
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

els.textOnly.addEventListener('change', () => {
  if (!els.textOnly.disabled) textOnlyWanted = els.textOnly.checked;
});

els.apiKey.value = storage.get(API_KEY_STORAGE) || '';
els.apiKey.addEventListener('change', () => {
  storage.set(API_KEY_STORAGE, els.apiKey.value.trim());
  loadSpeakers();
});

loadSpeakers();
