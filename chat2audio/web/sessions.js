// A conversation per character: its id is kept in the browser, what was said is kept by the server.
import { api, errorFrom } from './api.js';
import { storage } from './storage.js';

const key = (speaker) => `chat2audio.session.${speaker}`;

function newSessionId() {
  // crypto.randomUUID exists only on secure pages; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The id of the conversation with `speaker`, made up (and kept) the first time. */
export function sessionFor(speaker) {
  let id = storage.get(key(speaker));
  if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    id = newSessionId();
    storage.set(key(speaker), id);
  }
  return id;
}

/** Start a fresh conversation with `speaker`; returns {old, fresh} ids. */
export function startNewSession(speaker) {
  const old = sessionFor(speaker);
  const fresh = newSessionId();
  storage.set(key(speaker), fresh);
  return { old, fresh };
}

/** The turns the server remembers ([{role, content}]), or null if it cannot say. */
export async function fetchHistory(session, speaker) {
  const response = await api(`/sessions/${encodeURIComponent(session)}?speaker=${encodeURIComponent(speaker)}`);
  if (!response.ok) return null;
  const { turns = [] } = await response.json();
  return turns;
}

/** Have the server forget a conversation (one it never had is forgotten already). */
export async function forgetSession(session) {
  const response = await api(`/sessions/${encodeURIComponent(session)}`, { method: 'DELETE' });
  if (!response.ok && response.status !== 404) throw await errorFrom(response);
}
