// Debian's chromium, headless, as every browser test of tests/e2e starts
// it: no sandbox (CI runs as root), no GPU, and nothing that would reach
// past this machine on its own (updates, sync, background networking).
import { chromium } from 'playwright-core';

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
