// Debian's Chromium, headless, as both browser suites (run.mjs, conformance.mjs) launch it. `CHROMIUM` overrides
// the executable.
import { chromium } from 'playwright-core';

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // A hidden (backgrounded) page keeps running its timers at full rate: the background grace period is the
      // engine's, not Chrome's throttling.
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
    ],
  });
}
