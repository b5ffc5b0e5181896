// A sentence's words as marks the page can highlight one by one, from the server's word timings
// ({text, start_s, end_s}, seconds from the start of the sentence's audio).

/** Wrap each timed word found in `span`'s text in a `<span class="word">`, in order, leaving the
 * text itself as it was. Returns [{node, start_s, end_s}] for the words found: a word the engine
 * spoke differently from how it is written (a number read out) is not marked, and is skipped. */
export function markWords(span, words) {
  const text = span.textContent;
  const folded = text.toLowerCase();
  const comparable = folded.length === text.length; // lower-casing kept every offset where it was
  const marks = [];
  const pieces = [];
  let cursor = 0;
  for (const word of words) {
    const wanted = word.text.trim();
    if (!wanted) continue;
    let at = text.indexOf(wanted, cursor);
    if (at < 0 && comparable) at = folded.indexOf(wanted.toLowerCase(), cursor);
    if (at < 0) continue;
    if (at > cursor) pieces.push(document.createTextNode(text.slice(cursor, at)));
    const node = document.createElement('span');
    node.className = 'word';
    node.textContent = text.slice(at, at + wanted.length);
    pieces.push(node);
    marks.push({ node, start_s: word.start_s, end_s: word.end_s });
    cursor = at + wanted.length;
  }
  if (!marks.length) return marks;
  if (cursor < text.length) pieces.push(document.createTextNode(text.slice(cursor)));
  span.replaceChildren(...pieces);
  return marks;
}

/** The index of the word heard `t` seconds into the sentence: the last one begun (it stays marked
 * through the pause after it), or -1 before the first. */
export function wordAt(marks, t) {
  let found = -1;
  for (let i = 0; i < marks.length && marks[i].start_s <= t; i += 1) found = i;
  return found;
}
