// The chat log: a bubble per message, its sentences (the one sounding highlighted), an error line
// where a reply failed, and under each reply the time it took.
import { debug } from './debug.js';

export class Conversation {
  constructor(element) {
    this.element = element;
  }

  clear() {
    this.element.replaceChildren();
  }

  /** A new, empty bubble at the end: role "user" or "assistant", headed by `label`. */
  add(role, label) {
    return new Bubble(this, role, label);
  }

  scrollDown() {
    this.element.scrollTop = this.element.scrollHeight;
  }
}

class Bubble {
  constructor(conversation, role, label) {
    this.conversation = conversation;
    this.element = document.createElement('div');
    this.element.className = `bubble ${role}`;
    this.element.dataset.role = role;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = label;
    this.body = document.createElement('span');
    this.body.className = 'body';
    this.element.append(who, this.body);
    conversation.element.append(this.element);
    conversation.scrollDown();
  }

  /** Waiting for its first words (shown as such until something arrives). */
  set pending(on) {
    this.element.classList.toggle('pending', on);
  }

  addSentence(text, title) {
    const span = document.createElement('span');
    span.className = 'sentence';
    span.textContent = text;
    if (title) span.title = title;
    this.body.append(span);
    this.pending = false;
    this.conversation.scrollDown();
    return span;
  }

  /** Replace what the bubble says (e.g. "voice message" by what the server heard). */
  replaceText(text) {
    this.body.replaceChildren();
    return this.addSentence(text);
  }

  addError(error) {
    const line = document.createElement('span');
    line.className = 'error';
    line.dataset.errorType = error.type || '';
    line.textContent = error.status ? `${error.message} (${error.status} ${error.type})` : error.message;
    this.element.append(line);
    this.pending = false;
    this.conversation.scrollDown();
  }

  /** Mark `span` as the sentence sounding now (the one before it as spoken) until the player's
   * clock reaches `endAt`. */
  highlightWhileSounding(span, endAt, player) {
    for (const before of this.body.querySelectorAll('.sentence.speaking')) {
      before.classList.replace('speaking', 'spoken');
    }
    span.classList.add('speaking');
    debug.highlighted.push(span.textContent);
    player.at(endAt, () => span.classList.replace('speaking', 'spoken'));
  }

  /** "first audio 0.52 s · whole reply 3.10 s" under the reply: what this user waited for. */
  showLatency(latency) {
    const parts = [];
    if (latency.firstAudioMs !== null) parts.push(`first audio ${seconds(latency.firstAudioMs)}`);
    else if (latency.firstTextMs !== null) parts.push(`first words ${seconds(latency.firstTextMs)}`);
    parts.push(`whole reply ${seconds(latency.totalMs)}`);
    const line = document.createElement('span');
    line.className = 'latency';
    line.textContent = parts.join(' · ');
    line.title = 'Time from sending to the first sentence that arrived, and to the end of the reply';
    this.element.append(line);
    debug.latency = { firstAudioMs: latency.firstAudioMs, firstTextMs: latency.firstTextMs, totalMs: latency.totalMs };
  }
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(2)} s`;
}
