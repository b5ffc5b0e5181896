// Playback of a reply: one AudioContext, each sentence's WAV scheduled right after the one before,
// so sentences sound back to back with no gap while later ones are still arriving.
import { debug } from './debug.js';

const SCHEDULE_LEAD_S = 0.05; // time to hand a buffer to the audio thread before it is due

export function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export class Player {
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

  /** Now, on the clock that sentences are scheduled by (seconds). */
  get clock() {
    return this.ctx ? this.ctx.currentTime : 0;
  }

  /** Queue one sentence's WAV. Resolves when it starts to sound ({startAt, endAt} on the clock;
   * {blocked: true} if the browser keeps audio off, {error} if it cannot be decoded), so its text
   * shows just then. */
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
      return outcome.error ? outcome : this.whenAudible(outcome.startAt, epoch).then((heard) => ({ ...heard, startAt: outcome.startAt, endAt: outcome.endAt }));
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
