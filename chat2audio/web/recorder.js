// The microphone, recorded by the browser's own MediaRecorder and sent as it comes out (WebM or
// Ogg with Opus in Chrome and Firefox, MP4 in Safari): the server decodes any of them.

// Opus first: made for speech, and small. Every browser that records makes one of these.
const FORMATS = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm', 'audio/mp4'];
const BITS_PER_SECOND = 32000; // clear speech in Opus; a minute is 240 KB
const EXTENSIONS = { 'audio/webm': 'webm', 'audio/ogg': 'ogg', 'audio/mp4': 'm4a', 'audio/mpeg': 'mp3', 'audio/wav': 'wav' };

export class Recorder {
  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error(window.isSecureContext
        ? 'this browser cannot record audio'
        : 'the microphone needs a secure page: open it as https:// or http://localhost');
    }
    if (typeof MediaRecorder === 'undefined') throw new Error('this browser cannot record audio');
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    try {
      const mimeType = FORMATS.find((type) => MediaRecorder.isTypeSupported(type));
      this.recorder = new MediaRecorder(this.stream, { ...(mimeType && { mimeType }), audioBitsPerSecond: BITS_PER_SECOND });
      this.chunks = [];
      this.recorder.ondataavailable = (event) => {
        if (event.data.size) this.chunks.push(event.data);
      };
      this.stopped = new Promise((resolve, reject) => {
        this.recorder.onstop = resolve;
        this.recorder.onerror = (event) => reject(event.error || new Error('the recording failed'));
      });
      this.stopped.catch(() => {}); // stop() reports it; until then it is not an unhandled rejection
      this.recorder.start();
      this.startedAt = performance.now();
    } catch (error) {
      this.release();
      throw error;
    }
  }

  get seconds() {
    return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  /** Stop and return {blob, filename, seconds}: the recording as the browser encoded it. */
  async stop() {
    const seconds = this.seconds;
    if (this.recorder.state !== 'inactive') this.recorder.stop();
    try {
      await this.stopped; // the last data arrives just before
    } finally {
      this.release();
    }
    const type = this.recorder.mimeType || (this.chunks[0] && this.chunks[0].type) || '';
    const extension = EXTENSIONS[type.split(';')[0].trim()];
    return { blob: new Blob(this.chunks, { type }), filename: extension ? `speech.${extension}` : 'speech', seconds };
  }

  release() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    this.stream = null;
  }
}
