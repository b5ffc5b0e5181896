// The character picker: a card per character (portrait, name, language, description, and why it
// cannot speak if so), one radio group that arrow keys move through. Each card has a mouth and a
// mood for the stage (stage.js) to show while the character speaks.
import { api } from './api.js';

const LANGUAGES = { zh: 'Chinese', en: 'English', ja: 'Japanese', ko: 'Korean', yue: 'Cantonese', auto: 'any language' };

/** available: speaks; voiceless: its voice cannot load, it answers in text; broken: its file is. */
export function characterState(info) {
  if (!info) return 'available'; // not listed (removed meanwhile): the server will say
  if (info.available) return 'available';
  return info.can_chat ? 'voiceless' : 'broken';
}

export function characterName(info) {
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

export class CharacterPicker {
  /** `onPick(id)`: the user clicked a card, or moved to a character that can talk. */
  constructor(list, { onPick }) {
    this.list = list;
    this.speakers = new Map(); // id -> the server's SpeakerInfo
    this.portraitUrls = []; // object URLs of the portraits shown, released when the list is redrawn
    list.addEventListener('click', (event) => {
      const card = event.target.closest('.character');
      if (card) onPick(card.dataset.speakerId);
    });
    // One tab stop for the whole list; arrows move between characters, as in any radio group.
    list.addEventListener('keydown', (event) => {
      const all = this.cards();
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
      if (characterState(this.info(next.dataset.speakerId)) !== 'broken') onPick(next.dataset.speakerId);
    });
  }

  info(id) {
    return this.speakers.get(id);
  }

  cards() {
    return [...this.list.querySelectorAll('.character')];
  }

  render(speakers) {
    for (const url of this.portraitUrls) URL.revokeObjectURL(url);
    this.portraitUrls = [];
    this.speakers.clear();
    this.list.replaceChildren();
    for (const info of speakers) {
      this.speakers.set(info.id, info);
      this.list.append(this.card(info));
    }
    const first = this.cards()[0];
    if (first) first.tabIndex = 0; // until one is checked
  }

  /** A line in place of the cards, e.g. when they could not be loaded. */
  showMessage(text) {
    this.list.replaceChildren(element('p', 'loading', text));
  }

  /** Check `id`'s card (the only tab stop from now on), and focus it if asked. */
  check(id, { focus = false } = {}) {
    for (const node of this.cards()) {
      const mine = node.dataset.speakerId === id;
      node.setAttribute('aria-checked', String(mine));
      node.tabIndex = mine ? 0 : -1;
      if (mine && focus) node.focus();
    }
  }

  focus(id) {
    const card = this.cardOf(id);
    if (card) card.focus();
  }

  cardOf(id) {
    return this.cards().find((node) => node.dataset.speakerId === id) || null;
  }

  card(info) {
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
    portrait.style.setProperty('--hue', hue(info.id));
    if (info.portrait_url) this.loadPortrait(portrait, info.portrait_url);
    const face = element('span', 'face');
    face.append(portrait, element('span', 'mouth'));
    face.setAttribute('aria-hidden', 'true');

    const about = element('span', 'about');
    const heading = element('span', 'heading');
    heading.append(element('span', 'name', characterName(info)));
    if (info.language) heading.append(element('span', 'language', LANGUAGES[info.language] || info.language));
    heading.append(element('span', 'mood')); // the mood it speaks in now, if any
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
    const moods = info.styles && info.styles.length ? `Moods: ${info.styles.join(', ')}` : '';
    card.title = [characterName(info), info.description, moods, info.reason].filter(Boolean).join('\n');
    card.append(face, about);
    return card;
  }

  /** Fetched, not linked, so that the API key goes with it. The initials stay if it fails. */
  async loadPortrait(holder, url) {
    try {
      const response = await api(url);
      if (!response.ok) return;
      const source = URL.createObjectURL(await response.blob());
      this.portraitUrls.push(source);
      const image = new Image();
      image.alt = '';
      image.src = source;
      await image.decode();
      holder.replaceChildren(image);
      holder.classList.add('has-image');
    } catch { /* not an image the browser can show: keep the initials */ }
  }
}
