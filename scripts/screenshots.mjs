#!/usr/bin/env node
// Screenshots of every view of the production build (dist/web) at desktop (1440x900) and phone
// (390x844) size, light and dark, with something selected where a view has an Inspector, into a
// gitignored folder, to be looked at (issue 18): nothing cut off, nothing overlapping. Not a test.
//
//   npm run build:web && node scripts/screenshots.mjs [--out screenshots] [--port 4183] [--views header,map]
//
// It serves dist/web with `vite preview` on --port (E2E_PORT, else 4183) and drives Debian's
// Chromium (CHROMIUM_PATH overrides) on the demo image the page builds itself.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from '@playwright/test';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    out: { type: 'string', default: path.join(ROOT, 'screenshots') },
    port: { type: 'string', default: process.env.E2E_PORT ?? '4183' },
    views: { type: 'string' },
  },
});

/** The start page (no image open), then every view of web/views/registry.ts, by id and title. */
const VIEWS = [
  ['start', 'Start'],
  ...[...fs.readFileSync(path.join(ROOT, 'web/views/registry.ts'), 'utf8').matchAll(/\{ id: '([^']+)', title: '([^']+)'/g)].map((m) => [m[1], m[2]]),
];

/** What to do first in a view so that it shows its content (and the Inspector, where it has one). */
const PREPARE = {
  /** The page with no image open (the demo closed). */
  async start(page) {
    await page.getByRole('button', { name: 'Close demo.qcow2' }).click();
  },
  async snapshots(page) {
    await page.getByRole('table', { name: 'Snapshots' }).locator('tbody tr').first().click();
  },
  async l1(page) {
    await page.getByRole('button', { name: /^L1 entry 0: L2 table at/ }).click();
    await page.getByRole('button', { name: /^L2 entry 1:/ }).click();
  },
  async refcounts(page) {
    await page.getByRole('button', { name: /^Refcount table entry 0/ }).first().click().catch(() => {});
  },
  async translate(page) {
    await page.getByLabel('Guest offset').fill('64k');
    await page.getByRole('button', { name: 'Translate' }).click();
    await page.getByRole('main').getByRole('button', { name: /^Select host cluster/ }).first().click();
  },
  async playground(page) {
    await page.getByLabel('Guest offset').fill('1M');
    await page.getByRole('button', { name: 'Write', exact: true }).click();
  },
  async diff(page) {
    await page.getByRole('button', { name: 'Compare', exact: true }).click();
  },
  /** One write in the Playground first, so that the journal lists its writes. */
  async journal(page) {
    await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Playground', exact: true }).click();
    await page.getByLabel('Guest offset').fill('1M');
    await page.getByRole('button', { name: 'Write', exact: true }).click();
    await page.getByRole('status').filter({ hasText: 'After' }).waitFor();
    await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Journal', exact: true }).click();
  },
  async crash(page) {
    await page.getByRole('button', { name: 'Rehearse' }).click();
  },
  async check(page) {
    await page.getByRole('button', { name: 'Run check' }).click();
  },
};

const only = args.views ? new Set(args.views.split(',')) : null;
const port = Number(args.port);
fs.mkdirSync(args.out, { recursive: true });

// vite itself (not through npx, whose child would outlive a kill)
const vite = path.join(ROOT, 'node_modules/vite/bin/vite.js');
const server = spawn(process.execPath, [vite, 'preview', '--host', '127.0.0.1', '--port', String(port), '--strictPort'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((resolve, reject) => {
  server.stdout.on('data', (d) => String(d).includes(String(port)) && resolve());
  server.on('exit', (code) => reject(new Error(`vite preview exited (${code})`)));
});

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
try {
  for (const scheme of ['light', 'dark']) {
    for (const viewport of [{ width: 1440, height: 900 }, { width: 390, height: 844 }]) {
      for (const [id, title] of VIEWS) {
        if (only && !only.has(id)) continue;
        const context = await browser.newContext({ viewport, colorScheme: scheme });
        const page = await context.newPage();
        await page.goto(`http://127.0.0.1:${port}/#/${id === 'start' ? 'header' : id}`);
        await page.getByRole('tab', { name: 'demo.qcow2' }).waitFor();
        if (id !== 'start') await page.getByRole('heading', { name: title, exact: true, level: 2 }).waitFor();
        try {
          await PREPARE[id]?.(page);
        } catch (e) {
          process.stderr.write(`${id} ${viewport.width} ${scheme}: could not prepare: ${e.message.split('\n')[0]}\n`);
        }
        await page.waitForTimeout(600);
        const file = path.join(args.out, `${id}-${viewport.width}x${viewport.height}-${scheme}.png`);
        await page.screenshot({ path: file });
        process.stdout.write(`${path.relative(ROOT, file)}\n`);
        await context.close();
      }
    }
  }
} finally {
  await browser.close();
  server.kill();
  server.stdout.destroy();
}
