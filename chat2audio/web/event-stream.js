// Server-sent events read from a fetch response (EventSource cannot POST): each event's data,
// parsed as JSON, as soon as its last byte arrives.

/** Feed it the body's byte chunks; it calls onEvent with each complete event's parsed JSON,
 * whatever the chunk boundaries (mid-line, mid-UTF-8 character, mid-"\r\n"). */
export function sseParser(onEvent) {
  const decoder = new TextDecoder();
  let buffer = '';
  let scanned = 0; // no blank line before this offset: base64 audio makes events large

  function dispatch(block) {
    const data = block
      .split('\n')
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice(5).replace(/^ /, ''))
      .join('\n');
    if (data) onEvent(JSON.parse(data));
  }

  function drain() {
    for (;;) {
      const end = buffer.indexOf('\n\n', scanned);
      if (end < 0) {
        scanned = Math.max(0, buffer.length - 1);
        return;
      }
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      scanned = 0;
      dispatch(block);
    }
  }

  function normalize(text) {
    // A "\r" at the end may be the first half of "\r\n": hold it back for the next chunk.
    let held = '';
    if (text.endsWith('\r')) {
      held = '\r';
      text = text.slice(0, -1);
    }
    return [text.replace(/\r\n?/g, '\n'), held];
  }

  let pendingCr = '';
  return {
    push(bytes) {
      const [text, held] = normalize(pendingCr + decoder.decode(bytes, { stream: true }));
      pendingCr = held;
      buffer += text;
      drain();
    },
    end() {
      const [text] = normalize(pendingCr + decoder.decode());
      pendingCr = '';
      buffer += text;
      drain();
      if (buffer.trim()) dispatch(buffer);
      buffer = '';
    },
  };
}

/** Read the whole event stream of `response`, calling onEvent with each event as it completes. */
export async function readEvents(response, onEvent) {
  const parser = sseParser(onEvent);
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parser.push(value);
  }
  parser.end();
}
