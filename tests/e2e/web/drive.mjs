// Drives the chat2audio web page in headless Chromium and prints one JSON object of what it saw.
// Usage: node drive.mjs BASE_URL '{"speaker": "Low", "message": "...", "screenshots": "DIR", ...}'
// Each scenario records {ok: true, ...observations} or {ok: false, error}, so that one failing
// part does not hide the others; tests/e2e/test_web_page.py makes the assertions. Screenshots of
// each state land in options.screenshots, for a person to look at.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, optionsJson = '{}'] = process.argv.slice(2);
if (!base) {
  console.error('usage: node drive.mjs BASE_URL [OPTIONS_JSON]');
  process.exit(2);
}
const options = {
  speaker: 'Low',
  message: 'The first sentence is here. Then comes the second one! And is this the third?',
  textMessage: 'Only words this time. Nothing to hear.',
  unknownSpeaker: 'Nobody',
  failingSpeaker: 'Fragile', // its TTS fails on a sentence holding failingWord
  failingMessage: 'This first part is fine. But this one carries POISON inside.',
  recordSeconds: 1.2,
  voicelessSpeaker: 'Distant', // its voice files are not downloaded: text only
  performer: 'Moody', // its voice knows when each word is heard, and speaks in moods
  performMessage: '[happy] What a lovely day it is for a long walk in the park. [sad] But now I have to go home all alone.',
  timeoutMs: 20000,
  screenshots: 'screenshots',
  ...JSON.parse(optionsJson),
};
mkdirSync(options.screenshots, { recursive: true });
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
];

// Runs in the page before its own script: records what it sends and when sentence text appears.
function instrument() {
  window.__sent = [];
  const realFetch = window.fetch.bind(window);
  window.fetch = async (input, init = {}) => {
    const record = { url: String(input), method: init.method || 'GET' };
    window.__sent.push(record);
    const body = init.body;
    if (typeof body === 'string') {
      record.json = body;
    } else if (body instanceof FormData) {
      record.contentType = 'multipart/form-data';
      record.fields = {};
      for (const [name, value] of body.entries()) {
        if (value instanceof Blob) {
          const bytes = new Uint8Array(await value.arrayBuffer());
          let binary = '';
          for (let i = 0; i < bytes.length; i += 1) binary += String.fromCharCode(bytes[i]);
          record.fields[name] = { filename: value.name, type: value.type, size: value.size, base64: btoa(binary) };
        } else {
          record.fields[name] = value;
        }
      }
    }
    return realFetch(input, init);
  };
  // The text of each sentence must appear only once its audio has started.
  window.__revealed = [];
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      for (const node of mutation.addedNodes) {
        if (node.nodeType === 1 && node.classList.contains('sentence') && node.closest('.bubble.assistant')) {
          const debug = window.chat2audioDebug || {};
          window.__revealed.push({ text: node.textContent, sentencesStarted: debug.sentencesStarted, audioReceived: debug.audioReceived });
        }
      }
    }
  }).observe(document, { childList: true, subtree: true });
}

// Runs in the page while a reply is performed: what it shows, frame by frame, each time it changes:
// the word marked (its sentence and place there), the mood on the card, the mouth's drawn height.
function watchPerformance(speaker) {
  const seen = { words: [], moods: [], mouth: [] };
  const started = performance.now();
  let word;
  let mood;
  let mouth;
  let running = true;
  const sample = () => {
    if (!running) return;
    const t = (performance.now() - started) / 1000;
    const bubble = [...document.querySelectorAll('#conversation .bubble.assistant')].at(-1);
    const marked = bubble ? bubble.querySelector('.word.current') : null;
    if (marked !== word) {
      word = marked;
      const sentence = marked ? marked.closest('.sentence') : null;
      seen.words.push(marked ? {
        t, text: marked.textContent,
        sentence: [...bubble.querySelectorAll('.sentence')].indexOf(sentence),
        index: [...sentence.querySelectorAll('.word')].indexOf(marked),
      } : { t, text: null, sentence: null, index: null });
    }
    const card = document.querySelector(`#characters .character[data-speaker-id="${speaker}"]`);
    const shownMood = card ? card.querySelector('.mood').textContent : '';
    if (shownMood !== mood) {
      mood = shownMood;
      seen.moods.push({ t, mood });
    }
    const face = card ? getComputedStyle(card.querySelector('.mouth')) : null;
    const shownMouth = face && face.display !== 'none' ? face.height : 'hidden';
    if (shownMouth !== mouth && seen.mouth.length < 2000) {
      mouth = shownMouth;
      seen.mouth.push({ t, height: mouth });
    }
    requestAnimationFrame(sample);
  };
  sample();
  window.__performance = {
    stop: () => {
      sample(); // what shows at the end
      running = false;
      return seen;
    },
  };
}

const page_ = {
  debug: (page) => page.evaluate(() => ({ ...window.chat2audioDebug })),
  sent: (page) => page.evaluate(() => window.__sent),
  revealed: (page) => page.evaluate(() => window.__revealed),
  bubbles: (page) => page.$$eval('#conversation .bubble', (nodes) => nodes.map((node) => ({
    role: node.dataset.role,
    sentences: [...node.querySelectorAll('.sentence')].map((s) => s.textContent),
    errors: [...node.querySelectorAll('.error')].map((e) => e.textContent),
  }))),
  status: (page) => page.$eval('#status', (node) => ({ text: node.textContent, error: node.classList.contains('error') })),
  characters: (page) => page.$$eval('#characters .character', (nodes) => nodes.map((node) => {
    const box = node.getBoundingClientRect();
    const image = node.querySelector('.portrait img');
    return {
      id: node.dataset.speakerId,
      state: node.dataset.state,
      checked: node.getAttribute('aria-checked') === 'true',
      tabIndex: node.tabIndex,
      name: (node.querySelector('.name') || {}).textContent || '',
      description: (node.querySelector('.description') || {}).textContent || '',
      reason: (node.querySelector('.reason') || {}).textContent || '',
      fix: (node.querySelector('.fix code') || {}).textContent || '',
      title: node.title,
      portraitWidth: image ? image.naturalWidth : 0,
      initials: image ? '' : node.querySelector('.portrait').textContent,
      box: { x: box.x, y: box.y, width: box.width, height: box.height },
    };
  })),
  sentenceClasses: (page) => page.$$eval('#conversation .bubble.assistant', (nodes) => {
    const last = nodes.at(-1);
    return last ? [...last.querySelectorAll('.sentence')].map((s) => s.className) : [];
  }),
  latency: (page) => page.$$eval('#conversation .bubble.assistant .latency', (nodes) => nodes.map((n) => n.textContent)),
  box: (page, selector) => page.$eval(selector, (node) => {
    const box = node.getBoundingClientRect();
    return { x: box.x, y: box.y, width: box.width, height: box.height };
  }),
};

async function screenshot(page, name) {
  const path = join(options.screenshots, `${name}.png`);
  await page.screenshot({ path });
  return path;
}

async function pick(page, id) {
  await page.click(`#characters .character[data-speaker-id="${id}"]`);
  await page.waitForFunction((want) => window.chat2audioDebug.selected === want, id, { timeout: options.timeoutMs });
}

async function waitIdleAfter(page, requests) {
  await page.waitForFunction(
    (n) => window.chat2audioDebug.requests >= n && window.chat2audioDebug.state === 'idle',
    requests, { timeout: options.timeoutMs, polling: 50 },
  );
}

async function send(page, text) {
  const { requests } = await page_.debug(page);
  await page.fill('#input', text);
  await page.click('#send');
  await waitIdleAfter(page, requests + 1);
}

async function snapshot(page) {
  const bubbles = await page_.bubbles(page);
  const assistant = bubbles.filter((b) => b.role === 'assistant');
  return {
    bubbles,
    reply: assistant.at(-1) || null,
    debug: await page_.debug(page),
    status: await page_.status(page),
    request: (await page_.sent(page)).filter((r) => r.url.endsWith('/chat2audio')).at(-1) || null,
  };
}

async function scenario(results, name, fn) {
  const started = Date.now();
  if (results.load && !results.load.ok) {
    results[name] = { ok: false, error: 'not run: the page did not load', ms: 0 };
    return;
  }
  try {
    results[name] = { ok: true, ...(await fn()) };
  } catch (error) {
    results[name] = { ok: false, error: String(error && error.stack || error) };
  }
  results[name].ms = Date.now() - started;
}

const results = { console: [] };
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
try {
  const context = await browser.newContext({ viewport: DESKTOP });
  await context.addInitScript(instrument);
  const page = await context.newPage();
  page.on('console', (message) => {
    if (['error', 'warning'].includes(message.type())) results.console.push(`${message.type()}: ${message.text()}`);
  });
  page.on('pageerror', (error) => results.console.push(`pageerror: ${error.message}`));

  await scenario(results, 'load', async () => {
    const response = await page.goto(`${base}/`);
    if (!response || !response.ok()) throw new Error(`GET / answered ${response && response.status()}`);
    await page.waitForFunction(() => window.chat2audioDebug && window.chat2audioDebug.state === 'idle', null, { timeout: options.timeoutMs });
    // Portraits are fetched after the list is drawn.
    await page.waitForFunction(() => document.querySelector('.portrait.has-image'), null, { timeout: options.timeoutMs }).catch(() => {});
    return {
      characters: await page_.characters(page),
      current: await page.textContent('#current'),
      title: await page.title(),
      debug: await page_.debug(page),
      screenshot: await screenshot(page, 'desktop-characters'),
    };
  });

  await scenario(results, 'speak', async () => {
    await pick(page, options.speaker);
    const before = await page_.debug(page);
    const { requests } = before;
    await page.fill('#input', options.message);
    await page.click('#send');
    // Mid-reply: the second sentence sounding, highlighted.
    await page.waitForFunction(() => window.chat2audioDebug.highlighted.length >= 2, null, { timeout: options.timeoutMs, polling: 20 });
    const whilePlaying = { classes: await page_.sentenceClasses(page), screenshot: await screenshot(page, 'desktop-reply-playing') };
    await waitIdleAfter(page, requests + 1);
    return {
      before, ...(await snapshot(page)), revealed: await page_.revealed(page), whilePlaying,
      wordMarks: await page.$$eval('#conversation .word', (nodes) => nodes.length),
      afterPlaying: { classes: await page_.sentenceClasses(page), latency: await page_.latency(page) },
      screenshot: await screenshot(page, 'desktop-reply-done'),
    };
  });

  await scenario(results, 'keyboard', async () => {
    await page.focus(`#characters .character[aria-checked="true"]`);
    const start = (await page_.debug(page)).selected;
    await page.keyboard.press('ArrowDown');
    await page.waitForFunction((was) => window.chat2audioDebug.selected !== was, start, { timeout: options.timeoutMs });
    const moved = { selected: (await page_.debug(page)).selected, focused: await page.evaluate(() => document.activeElement.dataset.speakerId) };
    await page.keyboard.press('ArrowUp');
    await page.waitForFunction((was) => window.chat2audioDebug.selected === was, start, { timeout: options.timeoutMs });
    const tabStops = (await page_.characters(page)).filter((c) => c.tabIndex === 0).map((c) => c.id);
    return { start, moved, back: (await page_.debug(page)).selected, tabStops };
  });

  await scenario(results, 'voiceless', async () => {
    await pick(page, options.voicelessSpeaker);
    const textOnly = await page.$eval('#text-only', (node) => ({ checked: node.checked, disabled: node.disabled }));
    const statusOnPick = await page_.status(page);
    const shot = await screenshot(page, 'desktop-unavailable-character');
    const before = await page_.debug(page);
    await send(page, options.textMessage);
    const after = await snapshot(page);
    await pick(page, options.speaker);
    const restored = await page.$eval('#text-only', (node) => ({ checked: node.checked, disabled: node.disabled }));
    return { textOnly, statusOnPick, before, ...after, restored, current: await page.textContent('#current'), screenshot: shot };
  });

  await scenario(results, 'textOnly', async () => {
    await page.check('#text-only');
    const before = await page_.debug(page);
    try {
      await send(page, options.textMessage);
    } finally {
      await page.uncheck('#text-only');
    }
    return { before, ...(await snapshot(page)) };
  });

  await scenario(results, 'session', async () => {
    const key = `chat2audio.session.${options.speaker}`;
    const sessionId = await page.evaluate((k) => localStorage.getItem(k), key);
    const sentIds = (await page_.sent(page))
      .filter((r) => r.url.endsWith('/chat2audio') && r.json)
      .map((r) => JSON.parse(r.json))
      .filter((body) => body.speaker === options.speaker)
      .map((body) => body.session_id);
    // A reload shows the conversation again, from the server's memory of the session, and the page
    // turns idle only once it is shown, however slowly the server answers (delayed here).
    const slowHistory = async (route) => {
      if (route.request().method() === 'GET') await new Promise((resolve) => setTimeout(resolve, 500));
      await route.continue().catch(() => {}); // unrouted meanwhile: Playwright let it through
    };
    await page.route('**/sessions/*', slowHistory);
    await page.reload();
    await page.waitForFunction(() => window.chat2audioDebug.state === 'idle', null, { timeout: options.timeoutMs });
    const restored = await page_.bubbles(page);
    await page.unroute('**/sessions/*', slowHistory);
    await page.click('#new-conversation');
    await page.waitForFunction(
      (old) => window.__sent.some((r) => r.method === 'DELETE' && r.url.includes(`/sessions/${old}`)), sessionId,
      { timeout: options.timeoutMs },
    );
    await page.waitForFunction(() => document.querySelector('#status').textContent !== '', null, { timeout: options.timeoutMs });
    const newId = await page.evaluate((k) => localStorage.getItem(k), key);
    const remembered = await page.evaluate(async ([old, speaker]) => {
      const response = await fetch(`/sessions/${old}?speaker=${speaker}`);
      return { status: response.status, body: await response.json().catch(() => null) };
    }, [sessionId, options.speaker]);
    return {
      sessionId, sentIds, restored, newId, remembered,
      bubblesAfterNew: (await page_.bubbles(page)).length,
      status: await page_.status(page),
      deletes: (await page_.sent(page)).filter((r) => r.method === 'DELETE').map((r) => r.url),
    };
  });

  await scenario(results, 'microphone', async () => {
    const before = await page_.debug(page);
    await page.click('#mic');
    await page.waitForFunction(() => window.chat2audioDebug.state === 'recording', null, { timeout: options.timeoutMs });
    await page.waitForTimeout(options.recordSeconds * 1000);
    await page.click('#mic');
    // Done once the reply has begun to sound (or failed): no need to hear it all.
    await page.waitForFunction(
      ([requests, started]) => {
        const debug = window.chat2audioDebug;
        return debug.requests > requests && (debug.sentencesStarted > started || debug.state === 'idle');
      },
      [before.requests, before.sentencesStarted], { timeout: options.timeoutMs * 2, polling: 50 },
    );
    // The upload's bytes go back as base64: the test decodes them as the server does.
    const shot = await snapshot(page);
    const user = shot.bubbles.filter((b) => b.role === 'user').at(-1);
    return { before, ...shot, userBubble: user || null };
  });

  await scenario(results, 'midStreamError', async () => {
    await pick(page, options.failingSpeaker);
    const before = await page_.debug(page);
    await send(page, options.failingMessage);
    return { before, ...(await snapshot(page)) };
  });

  await scenario(results, 'unknownSpeaker', async () => {
    // The picker lists only known speakers: add a stale one, as if it had been removed meanwhile.
    await page.evaluate((id) => {
      const card = document.createElement('button');
      card.type = 'button';
      card.className = 'character available';
      card.dataset.speakerId = id;
      card.textContent = id;
      document.querySelector('#characters').append(card);
    }, options.unknownSpeaker);
    await pick(page, options.unknownSpeaker);
    await send(page, 'Is anybody there?');
    return await snapshot(page);
  });

  await scenario(results, 'phone', async () => {
    const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    await phone.addInitScript(instrument);
    const small = await phone.newPage();
    small.on('pageerror', (error) => results.console.push(`pageerror: ${error.message}`));
    try {
      await small.goto(`${base}/`);
      await small.waitForFunction(() => window.chat2audioDebug && window.chat2audioDebug.state === 'idle', null, { timeout: options.timeoutMs });
      await small.waitForFunction(() => document.querySelector('.portrait.has-image'), null, { timeout: options.timeoutMs }).catch(() => {});
      const layout = {
        characters: await page_.characters(small),
        composer: await page_.box(small, '#composer'),
        conversation: await page_.box(small, '#conversation'),
        scrollWidth: await small.evaluate(() => document.documentElement.scrollWidth),
      };
      const empty = await screenshot(small, 'phone-characters');
      await small.tap(`#characters .character[data-speaker-id="${options.speaker}"]`);
      const { requests } = await page_.debug(small);
      await small.fill('#input', options.message);
      await small.tap('#send');
      await waitIdleAfter(small, requests + 1);
      return { layout, ...(await snapshot(small)), screenshots: [empty, await screenshot(small, 'phone-reply')] };
    } finally {
      await phone.close();
    }
  });
  await scenario(results, 'perform', async () => {
    await pick(page, options.performer);
    const { requests } = await page_.debug(page);
    await page.evaluate(watchPerformance, options.performer);
    await page.fill('#input', options.performMessage);
    await page.click('#send');
    await page.waitForFunction(() => document.querySelector('#conversation .word.current'), null, { timeout: options.timeoutMs, polling: 20 });
    const shot = await screenshot(page, 'desktop-reply-performing');
    await waitIdleAfter(page, requests + 1);
    // The card comes to rest on the frame after the last sound.
    await page.waitForFunction(() => !document.querySelector('.character.performing'), null, { timeout: options.timeoutMs });
    const watched = await page.evaluate(() => window.__performance.stop());
    const styles = await page.$$eval('#conversation .bubble.assistant', (nodes) => (
      [...nodes.at(-1).querySelectorAll('.sentence')].map((s) => s.dataset.style || null)));
    return { ...(await snapshot(page)), ...watched, styles, screenshot: shot };
  });
  await scenario(results, 'pinned mood', async () => {
    const offered = async () => page.$eval('#mood', (select) => ({
      shown: !select.closest('label').hidden, options: [...select.options].map((o) => o.value),
    }));
    await pick(page, options.speaker);
    const withoutMoods = await offered();
    await pick(page, options.performer);
    const withMoods = await offered();
    await page.selectOption('#mood', 'sad');
    await send(page, options.performMessage);
    const styles = await page.$$eval('#conversation .bubble.assistant', (nodes) => (
      [...nodes.at(-1).querySelectorAll('.sentence')].map((s) => s.dataset.style || null)));
    await page.selectOption('#mood', '');
    return { ...(await snapshot(page)), withoutMoods, withMoods, styles };
  });
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));
