// What really happened on the page, for the end-to-end test (tests/e2e/web/drive.mjs) to read as
// window.chat2audioDebug. The page writes to it; nothing on the page reads it back.

export const debug = (window.chat2audioDebug = {
  state: 'loading', // loading | idle | recording | waiting | streaming | playing
  sentencesStarted: 0, // sentences whose audio began to sound
  sentencesReceived: 0,
  audioReceived: 0, // sentences that came with audio
  requests: 0,
  lastError: null, // {type, message, status?}
  sessionId: null,
  scheduled: [], // recent sentences' {queuedAt, startAt, duration} on the AudioContext clock
  highlighted: [], // the last reply's sentences, in the order each was highlighted as it sounded
  latency: null, // the last reply's {firstAudioMs, firstTextMs, totalMs}, as shown under it
  selected: null, // the character talked to
  upload: null, // the last voice message's {type, bytes, seconds}, as recorded
});
