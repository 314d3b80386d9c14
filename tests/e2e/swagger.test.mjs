// Swagger UI, tried as a person would: open /docs in Debian's chromium,
// expand POST /applications, Try it out, Execute, and see a 201 with a token;
// and for the operator API and the application listing (which shows every
// token), see a 401 until the key is given through the Authorize button,
// then a 200.
// Every request the page makes must stay on this machine (the UI's assets
// are compiled into the binary). BASE_URL names the running service.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch } from './browser.mjs';

const base = process.env.BASE_URL ?? 'http://127.0.0.1:3000';
const origin = new URL(base).origin;

// Clicks Execute on an expanded operation and returns the HTTP status shown.
// If the browser reports no HTTP status at all (a fetch that failed before any
// answer, seen once in CI), it says so and clicks again, as a person would.
// Any HTTP status, right or wrong, is returned as is.
async function execute(page, op) {
  const status = op.locator('.live-responses-table tbody .response-col_status').first();
  const description = op.locator('.live-responses-table tbody .response-col_description').first();
  let code = '';
  for (let attempt = 1; attempt <= 2 && !/^\d{3}$/.test(code); attempt++) {
    await op.locator('.execute').click();
    await status.waitFor({ timeout: 15_000 });
    await page.waitForTimeout(200);
    code = (await status.innerText()).trim().split(/\s/)[0];
    if (!/^\d{3}$/.test(code)) {
      console.log(`attempt ${attempt}: no HTTP status; live response: ${await description.innerText()}`);
    }
  }
  return { code, body: await description.innerText() };
}

test('POST /applications from Swagger UI answers 201 with a token', { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const outside = [];
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith(origin) && !url.startsWith('data:') && !url.startsWith('blob:')) {
        outside.push(url);
      }
    });
    await page.goto(`${base}/docs`, { waitUntil: 'networkidle' });
    const op = page.locator('.opblock-post').filter({
      has: page.locator('.opblock-summary-path[data-path="/api/v1/applications"]'),
    });
    await op.locator('.opblock-summary').click();
    await op.locator('.try-out__btn').click();
    await op.locator('textarea.body-param__text').fill('{"name": "made in Swagger UI"}');
    const { code, body } = await execute(page, op);
    assert.equal(code, '201', `live response: ${body}`);
    const json = await op.locator('.live-responses-table tbody .response-col_description pre').first().innerText();
    const token = JSON.parse(json).token;
    assert.match(token, /^[A-Za-z0-9_-]{22,}$/);
    assert.deepEqual(outside, [], 'the page loaded nothing from outside the machine');
    console.log(`Swagger UI: POST /applications answered 201 with token ${token.slice(0, 6)}…; 0 requests left the machine`);
  } finally {
    await browser.close();
  }
});

test('the operator API answers 401 until the key is given with Authorize, then 200', { timeout: 60_000 }, async () => {
  const key = process.env.ADMIN_API_KEY;
  assert.ok(key, 'ADMIN_API_KEY is set for the service and this test');
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(`${base}/docs`, { waitUntil: 'networkidle' });
    const op = page.locator('.opblock-get').filter({
      has: page.locator('.opblock-summary-path[data-path="/api/v1/admin/queues"]'),
    });
    await op.locator('.opblock-summary').click();
    await op.locator('.try-out__btn').click();
    let res = await execute(page, op);
    assert.equal(res.code, '401', `without the key: ${res.body}`);

    await page.locator('.auth-wrapper .authorize').first().click();
    const dialog = page.locator('.dialog-ux .modal-ux');
    await dialog.locator('input').first().fill(key);
    await dialog.locator('button.authorize').first().click();
    await dialog.locator('button.btn-done').first().click();

    res = await execute(page, op);
    assert.equal(res.code, '200', `with the key: ${res.body}`);
    const json = await op.locator('.live-responses-table tbody .response-col_description pre').first().innerText();
    const queues = JSON.parse(json).queues.map((q) => q.queue);
    assert.deepEqual(queues, ['chats', 'messages', 'search']);
    console.log('Swagger UI: GET /admin/queues answered 401 without the key, 200 after Authorize');

    // The listing of every application (with tokens) uses the same key.
    const list = page.locator('.opblock-get').filter({
      has: page.locator('.opblock-summary-path[data-path="/api/v1/applications"]'),
    });
    await list.locator('.opblock-summary').click();
    await list.locator('.try-out__btn').click();
    res = await execute(page, list);
    assert.equal(res.code, '200', `the listing with the key: ${res.body}`);
    const listing = await list.locator('.live-responses-table tbody .response-col_description pre').first().innerText();
    assert.ok(Array.isArray(JSON.parse(listing).applications));
    console.log('Swagger UI: GET /applications answered 200 after Authorize');
  } finally {
    await browser.close();
  }
});
