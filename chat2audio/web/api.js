// Requests to this server: the API key (if the user gave one) goes with each, and an error answer
// becomes a ServerError carrying the server's own {type, message}.
import { storage } from './storage.js';

export const API_KEY_STORAGE = 'chat2audio.apiKey';

export class ServerError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = storage.get(API_KEY_STORAGE);
  if (key) headers.set('Authorization', `Bearer ${key}`);
  return fetch(path, { ...init, headers });
}

/** The ServerError an unsuccessful response stands for: its JSON error, or its status line. */
export async function errorFrom(response) {
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
