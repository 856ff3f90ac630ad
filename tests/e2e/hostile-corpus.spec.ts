// The fuzz corpus's regression set in the browser: each recipe of tests/fuzz/regressions.json is
// materialised at test time (qemu-made seed + the recipe's mutations), opened, and every view of
// the rail visited, with the cluster map and a check run: no page error anywhere (an uncaught
// exception in a view, e.g. Svelte's each_key_duplicate on duplicate or empty snapshot ids), and
// the tab still answers afterwards. Plus the image of issue 15: a qemu-made image with snapshots
// cut short after its snapshot table starts opens read-only with the reason, and Snapshots renders.
// The longest main-thread task (Long Tasks API) is recorded as an annotation, not asserted: the
// house rules keep timings out of pass/fail tests.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { applyMutations, type Mutation } from '../fuzz/mutator.ts';
import { buildSeeds } from '../fuzz/seeds.ts';
import { qemuImgOk, qemuIoOk, createImage, qemuCheck, poke } from '../helpers/qemu.ts';
import { SNAP, readHeader, readSnapshots } from '../helpers/qcow2-mini.ts';
import { test, expect, openViaInput } from './fixtures.ts';

interface Regression { name: string; seed: string; mutations: Mutation[] }
const REGRESSIONS = JSON.parse(fs.readFileSync(path.resolve('tests/fuzz/regressions.json'), 'utf8')) as Regression[];
const VIEWS = ['Header', 'Snapshots', 'L1 table', 'Refcount table', 'Cluster map', 'Translation', 'Diff', 'Hex', 'Playground', 'Journal', 'Crash stage', 'Check'];

/** Uncaught exceptions of the page, collected from now on. */
function pageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  return errors;
}

/** Collect every main-thread task over 50 ms from page load on (read back by longestTask). */
async function observeLongTasks(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const w = window as unknown as { __longTasks: number[] };
    w.__longTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) w.__longTasks.push(e.duration);
    }).observe({ type: 'longtask', buffered: true });
  });
}

async function longestTask(page: Page): Promise<number> {
  return page.evaluate(() => Math.max(0, ...(window as unknown as { __longTasks: number[] }).__longTasks));
}

/** Visit every view; in Cluster map and Check, start the job and wait until it ends (result or error). */
async function visitEveryView(page: Page): Promise<void> {
  const rail = page.getByRole('navigation', { name: 'Views' });
  for (const name of VIEWS) {
    await rail.getByRole('link', { name, exact: true }).click();
    await expect(page.getByRole('heading', { name, exact: true, level: 2 })).toBeVisible();
    if (name === 'Check') {
      const run = page.getByRole('button', { name: 'Run check' });
      if (await run.isEnabled()) {
        await run.click();
        // the check ends: a verdict or a one-line error, and the button is back
        await expect(run).toBeEnabled({ timeout: 30_000 });
      }
    }
  }
}

test.describe('the fuzz regression set in every view', () => {
  const seeds = new Map<string, Uint8Array>();
  test.beforeAll(() => {
    for (const s of buildSeeds()) seeds.set(s.name, s.image);
  });

  for (const r of REGRESSIONS) {
    test(r.name, async ({ page, tmp }) => {
      const errors = pageErrors(page);
      await observeLongTasks(page);
      const seed = seeds.get(r.seed);
      expect(seed, `seed ${r.seed}`).toBeDefined();
      const file = path.join(tmp, `${r.name}.qcow2`);
      fs.writeFileSync(file, applyMutations(seed!, r.mutations));
      await page.goto('/');
      // from here on: opening, every view, the map and the check (not the app's own start)
      await page.evaluate(() => ((window as unknown as { __longTasks: number[] }).__longTasks.length = 0));
      await openViaInput(page, { path: file, name: `${r.name}.qcow2` });
      await visitEveryView(page);
      // the tab still answers: back to Header
      await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Header', exact: true }).click();
      await expect(page.getByRole('heading', { name: 'Header', exact: true, level: 2 })).toBeVisible();
      expect(errors).toEqual([]);
      test.info().annotations.push({ type: 'longest main-thread task (ms)', description: String(await longestTask(page)) });
    });
  }
});

test('an image cut short after its snapshot table starts: read-only with the reason, Snapshots renders', async ({ page, tmp }) => {
  const errors = pageErrors(page);
  const full = path.join(tmp, 'a.qcow2');
  createImage(full, '64M');
  qemuIoOk(full, 'write -P 0x11 0 1M');
  for (const s of ['one', 'two', 'three']) qemuImgOk(['snapshot', '-c', s, full]);
  const table = readHeader(full).snapshotsOffset;
  // `head -c` a little past the start of the snapshot table: the entries after the first are cut off
  const cut = path.join(tmp, 'trunc.qcow2');
  fs.writeFileSync(cut, fs.readFileSync(full).subarray(0, table + 100));
  expect(qemuCheck(cut).exitCode, 'qemu-img calls it corrupt').toBe(2);

  await page.goto('/');
  await openViaInput(page, { path: cut, name: 'trunc.qcow2' });
  await expect(page.getByText('Read-only', { exact: true })).toBeVisible();
  await expect(page.getByRole('alert')).toContainText(/snapshot table entry \d+ at 0x[0-9a-f]+ is incomplete/i);
  await visitEveryView(page);
  await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Translation', exact: true }).click();
  await expect(page.getByRole('heading', { name: 'Translation', exact: true, level: 2 })).toBeVisible();
  expect(errors).toEqual([]);
});

test('duplicate snapshot IDs and names: every row renders, the views keep working', async ({ page, tmp }) => {
  const errors = pageErrors(page);
  const file = path.join(tmp, 'dup.qcow2');
  createImage(file, '64M');
  qemuIoOk(file, 'write -P 0x11 0 64k');
  qemuImgOk(['snapshot', '-c', 'same', file]);
  qemuImgOk(['snapshot', '-c', 'same', file]);
  // the second entry's ID '2' becomes '1': two entries with ID 1 and name 'same'
  const second = readSnapshots(file)[1]!;
  expect(second.idStr).toBe('2');
  const idAt = second.entryPos + SNAP.extra + second.extraDataSize;
  poke(file, idAt, [0x31]);
  expect(readSnapshots(file).map((s) => [s.idStr, s.name])).toEqual([['1', 'same'], ['1', 'same']]);
  await page.goto('/');
  await openViaInput(page, { path: file, name: 'dup.qcow2' });
  await visitEveryView(page);
  await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Snapshots', exact: true }).click();
  await expect(page.getByRole('row').filter({ hasText: 'same' })).toHaveCount(2);
  expect(errors).toEqual([]);
});
