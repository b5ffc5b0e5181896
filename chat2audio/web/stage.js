// The character performing its reply, on the audio clock: the word being heard is marked, and its
// card shows the mood of the sentence sounding and a mouth that opens with the audio's loudness.
// With nothing playing the card is at rest: mouth gone, no mood.
import { mouthAt, setMouth } from './mouth.js';
import { markWords, wordAt } from './words.js';

export class Stage {
  /** `cardOf(speaker)`: that character's card element, or null if it is not shown. */
  constructor({ player, cardOf }) {
    this.player = player;
    this.cardOf = cardOf;
    this.cues = []; // the sentences sounding or scheduled, in order
    this.card = null; // the card performing
    this.frame = null;
  }

  /** Perform one sentence of `speaker`'s reply as it sounds from `startAt` to `endAt` (player
   * clock): `span` shows its text; `sentence` is its event ({style, words, mouth, mouth_frame_s}). */
  cue({ speaker, span, sentence, startAt, endAt }) {
    const card = this.cardOf(speaker);
    if (card !== this.card) {
      this.rest();
      this.card = card;
      if (card) card.classList.add('performing');
    }
    this.cues.push({
      marks: Array.isArray(sentence.words) ? markWords(span, sentence.words) : [],
      mouth: Array.isArray(sentence.mouth) ? sentence.mouth : null,
      frameS: sentence.mouth_frame_s,
      style: sentence.style || '',
      startAt,
      endAt,
      word: -1,
      started: false,
    });
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.tick());
  }

  stop() {
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
    for (const cue of this.cues) this.markWord(cue, -1);
    this.cues = [];
    this.rest();
  }

  tick() {
    this.frame = null;
    const now = this.player.clock;
    while (this.cues.length && this.cues[0].endAt <= now) this.markWord(this.cues.shift(), -1);
    const cue = this.cues[0];
    let open = 0;
    if (cue && cue.startAt <= now) {
      const t = now - cue.startAt;
      if (!cue.started) {
        cue.started = true;
        this.showMood(cue.style);
      }
      this.markWord(cue, wordAt(cue.marks, t));
      open = mouthAt(cue.mouth, cue.frameS, t);
    }
    this.showMouth(open);
    // Between two sentences the next one's cue may come a moment late: the mood stays meanwhile.
    if (this.cues.length || this.player.playing) this.frame = requestAnimationFrame(() => this.tick());
    else this.rest();
  }

  markWord(cue, index) {
    if (index === cue.word) return;
    if (cue.word >= 0) cue.marks[cue.word].node.classList.remove('current');
    if (index >= 0) cue.marks[index].node.classList.add('current');
    cue.word = index;
  }

  showMood(style) {
    const mood = this.card && this.card.querySelector('.mood');
    if (!mood) return;
    this.card.dataset.mood = style;
    mood.textContent = style;
  }

  showMouth(open) {
    const mouth = this.card && this.card.querySelector('.mouth');
    if (mouth) setMouth(mouth, open);
  }

  rest() {
    if (!this.card) return;
    this.showMood('');
    this.showMouth(0);
    this.card.classList.remove('performing');
    this.card = null;
  }
}
