// The page's state (what the buttons allow) and its status line; errors are also recorded for
// the end-to-end test.
import { debug } from './debug.js';

const $ = (id) => document.getElementById(id);

/** loading | idle | recording | waiting | streaming | playing: sending waits while busy. */
export function setState(state) {
  debug.state = state;
  document.body.dataset.state = state;
  const busy = state === 'waiting' || state === 'streaming' || state === 'loading';
  $('send').disabled = busy || state === 'recording';
  $('mic').disabled = busy;
}

export function setStatus(text, isError = false) {
  const status = $('status');
  status.textContent = text || '';
  status.classList.toggle('error', Boolean(isError));
}

/** Note `error` as the last one seen and return it as {type, message, status} to show. */
export function recordError(error) {
  debug.lastError = { type: error.type || 'client_error', message: error.message || String(error), status: error.status };
  return debug.lastError;
}
