// The speaking character's mouth: how open it is, from the server's loudness per frame of a
// sentence's audio (numbers in [0, 1], one per `mouth_frame_s` seconds).

/** How open the mouth is `t` seconds into a sentence: its frame's value, 0 outside the audio. */
export function mouthAt(mouth, frameS, t) {
  if (!mouth || !(frameS > 0) || t < 0) return 0;
  const value = mouth[Math.floor(t / frameS)];
  return Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : 0;
}

/** Show `open` (0 closed … 1 wide open) on a card's mouth element. */
export function setMouth(element, open) {
  const shown = open.toFixed(2);
  if (element.dataset.open === shown) return;
  element.dataset.open = shown;
  element.style.setProperty('--open', shown);
}
