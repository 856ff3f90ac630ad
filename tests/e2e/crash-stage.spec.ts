// The crash stage on the demo image, in Chromium: a snapshot create rehearsed (nothing reaches the
// image), the power cut after every write, the writes since the last flush kept and lost, and the
// rule broken both ways. Each verdict on the page is compared with `qemu-img check` on the disk
// the page offers for download at that point: same exit code, same counts.
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { qemuCheck } from '../helpers/qemu.ts';
import { test, expect, showView } from './fixtures.ts';

/** The verdict as the page words it: qemu-img check's exit code and the counts in the headline. */
async function verdict(page: Page): Promise<{ exitCode: number; corruptions: number; leaks: number; text: string }> {
  const box = page.getByRole('status').filter({ has: page.locator('.headline') });
  await expect(box).toHaveAttribute('aria-busy', 'false');
  const headline = (await box.locator('.headline').textContent()) ?? '';
  const count = (re: RegExp): number => Number(re.exec(headline)?.[1] ?? 0);
  const exitCode = headline.startsWith('Clean') ? 0 : headline.startsWith('Leaks only') ? 3 : headline.startsWith('Corrupt') ? 2 : 1;
  return {
    exitCode,
    corruptions: count(/(\d+) errors?/),
    leaks: exitCode === 3 ? count(/(\d+) clusters?/) : count(/(\d+) leaks?/),
    text: (await box.textContent()) ?? '',
  };
}

/** The verdict on the page equals qemu-img check on the disk downloaded at the same point. */
async function expectQemuAgrees(page: Page, dir: string, label: string): Promise<number> {
  const v = await verdict(page);
  const d = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download this disk' }).click();
  const file = path.join(dir, `${label}.qcow2`);
  await (await d).saveAs(file);
  const q = qemuCheck(file);
  expect({ exitCode: v.exitCode, corruptions: v.corruptions, leaks: v.leaks }, `${label}: ${q.stderr}`)
    .toEqual({ exitCode: q.exitCode, corruptions: q.corruptions, leaks: q.leaks });
  return v.exitCode;
}

test('a crash staged at every write of a snapshot create on the demo, kept, lost, and with the rule broken', async ({ page, tmp }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Crash stage');
  await page.getByLabel('Operation', { exact: true }).selectOption('create');
  await page.getByLabel('Name', { exact: true }).fill('crash-test');
  await page.getByRole('button', { name: 'Rehearse' }).click();
  await expect(page.getByRole('heading', { name: /snapshot create 'crash-test'/ })).toBeVisible();

  // It starts right after the commit write: the new image, clean.
  const commit = page.getByRole('radio', { name: /the commit point/ });
  await expect(commit).toBeChecked();
  expect((await verdict(page)).text).toContain('after the operation');

  // Every write, kept: always clean, as qemu-img check says too; before the commit the old image.
  const steps = await page.getByRole('radio', { name: /^Step \d+:/ }).count();
  expect(steps).toBeGreaterThan(3);
  await page.getByRole('radio', { name: 'Step 0: before the first write' }).check();
  for (let n = 0; n < steps; n++) {
    if (n > 0) await page.getByRole('button', { name: 'Next write ▶' }).click();
    await expect(page.getByRole('radio', { name: new RegExp(`^Step ${n}:`) })).toBeChecked();
    expect(await expectQemuAgrees(page, tmp, `kept-${n}`), `write ${n}`).toBe(0);
  }
  expect((await verdict(page)).text).toContain('after the operation');

  // Keyboard: arrows move the cut through the radio group.
  await commit.focus();
  await page.keyboard.press('ArrowUp');
  await expect(commit).not.toBeChecked();
  expect((await verdict(page)).text).toContain('before the operation');
  await page.keyboard.press('ArrowDown');
  await expect(commit).toBeChecked();

  // The commit write lost with the power: the old image, clean.
  await page.getByRole('radio', { name: /never reached it/ }).check();
  const lost = await verdict(page);
  expect(lost.text).toContain('never reached the disk');
  expect(lost.text).toContain('before the operation');
  expect(await expectQemuAgrees(page, tmp, 'commit-lost')).toBe(0);
  await page.getByRole('radio', { name: /reached the disk \(kept\)/ }).check();

  // Break the rule: lower the refcounts before the old tables are unpublished.
  await page.getByRole('switch', { name: 'Break the rule' }).check();
  await page.getByRole('radio', { name: 'Lower the refcounts before the reference is gone' }).check();
  const moved = page.getByRole('radio', { name: /rule broken/ });
  await moved.first().check();
  const broken = await verdict(page);
  expect(broken.text).toContain('The rule is broken on purpose');
  expect(await expectQemuAgrees(page, tmp, 'lower-first')).toBe(2);
  // the same cut with the unflushed writes lost: the harm never reaches the disk
  await page.getByRole('radio', { name: /never reached it/ }).check();
  expect(await expectQemuAgrees(page, tmp, 'lower-first-lost')).toBe(0);
  await page.getByRole('radio', { name: /reached the disk \(kept\)/ }).check();

  // The other way: the new tables published before the refcounts that count their clusters.
  await page.getByRole('radio', { name: 'Publish the reference before the refcounts go up' }).check();
  await page.getByRole('radio', { name: /the commit point/ }).check();
  expect(await expectQemuAgrees(page, tmp, 'publish-first')).toBe(2);
  expect((await verdict(page)).text).toContain('A mix of old and new');

  // Switched off again: the engine's order, clean at the same cut.
  await page.getByRole('switch', { name: 'Break the rule' }).uncheck();
  expect(await expectQemuAgrees(page, tmp, 'engine-order')).toBe(0);

  // Nothing reached the image: it still lists its two snapshots only.
  await showView(page, 'Snapshots');
  await expect(page.getByRole('cell', { name: 'crash-test' })).toHaveCount(0);
});

test('a guest write staged with its L2 entry published before the refcount goes up is corrupt, as qemu-img says', async ({ page, tmp }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await showView(page, 'Crash stage');
  await page.getByLabel('Operation', { exact: true }).selectOption('write');
  await page.getByLabel('Guest offset').fill('0x2000000');
  await page.getByLabel('Length').fill('4096');
  await page.getByRole('button', { name: 'Rehearse' }).click();
  await expect(page.getByRole('heading', { name: /guest write of 4096 bytes/ })).toBeVisible();
  // the engine's order: leaks at worst (the refcount goes up before the L2 entry), never corrupt
  const steps = await page.getByRole('radio', { name: /^Step \d+:/ }).count();
  const codes: number[] = [];
  for (let n = 0; n < steps; n++) {
    await page.getByRole('radio', { name: new RegExp(`^Step ${n}:`) }).check();
    codes.push(await expectQemuAgrees(page, tmp, `write-${n}`));
    if (codes[n] === 3) expect((await verdict(page)).text).toContain('costs space, never data');
  }
  expect(codes.every((c) => c === 0 || c === 3), codes.join(',')).toBe(true);
  expect(codes).toContain(3);
  // only one way applies (nothing is freed): the switch alone selects it
  await page.getByRole('switch', { name: 'Break the rule' }).press('Space');
  await expect(page.getByText('Publish the reference before the refcounts go up.')).toBeVisible();
  await page.getByRole('radio', { name: /rule broken/ }).check();
  expect(await expectQemuAgrees(page, tmp, 'write-published-first')).toBe(2);
  expect((await verdict(page)).text).toContain('refcount lower than the number of references');
});

test('on a phone the stage fits the screen, the verdict comes before the list, and nothing scrolls sideways', async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto('/');
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await showView(page, 'Crash stage');
  await page.getByLabel('Operation', { exact: true }).selectOption('delete');
  await page.getByRole('button', { name: 'Rehearse' }).click();
  await expect(page.getByRole('heading', { name: /snapshot delete/ })).toBeVisible();
  await page.getByRole('switch', { name: 'Break the rule' }).check();
  await page.getByRole('radio', { name: /rule broken/ }).first().check();
  await expect((await verdict(page)).text).toMatch(/^Corrupt/);
  const box = page.getByRole('status').filter({ has: page.locator('.headline') });
  const list = page.getByRole('group', { name: 'Cut the power after' });
  expect((await box.boundingBox())!.y).toBeLessThan((await list.boundingBox())!.y);
  const overflow = await page.evaluate(() => {
    const main = document.getElementById('main')!;
    return { main: main.scrollWidth - main.clientWidth, page: document.documentElement.scrollWidth - window.innerWidth };
  });
  expect(overflow.page).toBe(0);
  expect(overflow.main).toBeLessThanOrEqual(1);
});
