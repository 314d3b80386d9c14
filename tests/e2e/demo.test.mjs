// The live demo page (/demo), tried as a person would in Debian's chromium:
// create an application and a chat, post a message in the page and see it
// arrive in both subscriber panes; cut every connection of the browser (a
// TCP proxy in front of the service, which the test controls), post while
// the panes are cut off, and see EventSource reconnect and each message
// posted meanwhile arrive exactly once, in order; edit and delete a message
// and see both show; page through the history by cursor.
// BASE_URL names the running service.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { launch } from './browser.mjs';

const base = process.env.BASE_URL ?? 'http://127.0.0.1:3000';
const target = new URL(base);

// A TCP proxy in front of the service: `cut()` drops every connection and
// refuses new ones until `restore()`.
function startProxy() {
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on('error', done);
      s.on('close', done);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({
      url: `http://127.0.0.1:${server.address().port}`,
      cut() {
        refusing = true;
        for (const s of sockets) s.destroy();
      },
      restore() {
        refusing = false;
      },
      close() {
        server.close();
        for (const s of sockets) s.destroy();
      },
    }));
  });
}

// The numbers shown in a pane, in the order shown (duplicates kept).
async function numbers(page, pane) {
  return page.$$eval(`#${pane} li`, (items) => items.map((li) => Number(li.dataset.number)));
}

async function waitStatus(page, pane, status) {
  await page.waitForFunction(
    ([p, s]) => document.getElementById(p).dataset.status === s,
    [pane, status],
    { timeout: 15_000 },
  );
}

test('/demo: live delivery to two subscribers, reconnection without loss or duplicates, edit, delete, history', { timeout: 120_000 }, async () => {
  const proxy = await startProxy();
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${proxy.url}/demo`, { waitUntil: 'load' });
    await page.click('#create');
    await waitStatus(page, 'pane-a', 'live');
    await waitStatus(page, 'pane-b', 'live');
    const token = await page.inputValue('#token');
    const chat = Number(await page.inputValue('#chat'));
    assert.match(token, /\S{16,}/);

    // Posted in the page: both panes show it.
    await page.fill('#body', 'hello from the page');
    await page.click('#send');
    for (const pane of ['pane-a', 'pane-b']) {
      await page.locator(`#${pane} li[data-number="1"] .body`).filter({ hasText: 'hello from the page' })
        .waitFor({ timeout: 10_000 });
    }

    // Cut every connection; post five messages while the panes are cut off.
    proxy.cut();
    await waitStatus(page, 'pane-a', 'reconnecting');
    await waitStatus(page, 'pane-b', 'reconnecting');
    for (let i = 2; i <= 6; i++) {
      const r = await fetch(`${base}/api/v1/applications/${token}/chats/${chat}/messages`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ body: `posted while cut off ${i}` }),
      });
      assert.equal(r.status, 201);
      assert.equal((await r.json()).number, i);
    }
    proxy.restore();
    for (const pane of ['pane-a', 'pane-b']) {
      await page.locator(`#${pane} li[data-number="6"]`).waitFor({ timeout: 20_000 });
    }
    // Give a duplicate the time to show, then: each once, in order.
    await page.waitForTimeout(1_000);
    for (const pane of ['pane-a', 'pane-b']) {
      assert.deepEqual(await numbers(page, pane), [1, 2, 3, 4, 5, 6], pane);
      const opens = Number(await page.getAttribute(`#${pane}`, 'data-opens'));
      assert.ok(opens >= 2, `${pane} reconnected (opened ${opens} times)`);
    }

    // An edit and a delete, made in the page, show in the other pane.
    await page.fill('#edit-number', '2');
    await page.fill('#edit-body', 'edited in the page');
    await page.click('#edit');
    await page.locator('#pane-b li[data-number="2"] .body').filter({ hasText: 'edited in the page' })
      .waitFor({ timeout: 15_000 });
    await page.fill('#edit-number', '3');
    await page.click('#delete');
    await page.locator('#pane-b li[data-number="3"].deleted').waitFor({ timeout: 15_000 });

    // History by cursor, once the list shows every message (lists lag
    // creates until their flush; the deleted one is not listed).
    for (let tries = 0; ; tries++) {
      const r = await fetch(`${base}/api/v1/applications/${token}/chats/${chat}/messages?after=0&limit=100`);
      const listed = (await r.json()).messages.length;
      if (listed >= 5) break;
      assert.ok(tries < 100, `the list shows ${listed} of 5 messages after 20 s`);
      await new Promise((done) => setTimeout(done, 200));
    }
    await page.click('#more');
    await page.locator('#history-list li[data-number="6"]').waitFor({ timeout: 10_000 });
    assert.deepEqual(await numbers(page, 'history-list'), [1, 2, 4, 5, 6]);
    assert.equal(await page.locator('#history-list li[data-number="1"]').innerText(), 'hello from the page');
    assert.equal(await page.locator('#history-list li[data-number="2"]').innerText(), 'edited in the page');
    assert.deepEqual(errors, [], 'no script error on the page');
  } finally {
    await browser.close();
    proxy.close();
  }
});

test('/demo is served with a Content-Security-Policy that forbids inline script', async () => {
  const r = await fetch(`${base}/demo`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/html/);
  assert.match(r.headers.get('content-security-policy'), /script-src 'self'/);
  const js = await fetch(`${base}/demo/demo.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type'), /javascript/);
});
