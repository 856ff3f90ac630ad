// Diff between any two of {the active disk, each snapshot}, judged by QEMU: the guest clusters
// listed are those whose bytes differ between `qemu-img convert -l` exports, and the host clusters
// outlined on the cluster map are the ones `qemu-img map` showed behind them on either side.
// Check findings are outlined on the map too.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { createImage, qemuCheck, qemuConvertToRaw, qemuImgOk, qemuIoOk, qemuMap, type QemuMapEntry } from '../helpers/qemu.ts';
import { test, expect, openViaInput, showView } from './fixtures.ts';

const CS = 65536;

/** Host cluster behind a guest cluster in a `qemu-img map` (undefined: unallocated or plain zero). */
function hostOf(map: QemuMapEntry[], cluster: number): number | undefined {
  const g = cluster * CS;
  const e = map.find((m) => m.start <= g && g < m.start + m.length);
  return e?.offset === undefined ? undefined : (e.offset + g - e.start) / CS;
}

/** Guest clusters whose bytes differ between two raw exports. */
function changedClusters(a: string, b: string): number[] {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  const out: number[] = [];
  for (let c = 0; c * CS < Math.max(x.length, y.length); c++) {
    if (!x.subarray(c * CS, (c + 1) * CS).equals(y.subarray(c * CS, (c + 1) * CS))) out.push(c);
  }
  return out;
}

/** Clusters as the Diff view writes its ranges: 0x20000–0x2ffff. */
function ranges(clusters: number[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < clusters.length; ) {
    let j = i;
    while (j + 1 < clusters.length && clusters[j + 1] === clusters[j]! + 1) j++;
    out.push(`0x${(clusters[i]! * CS).toString(16)}–0x${((clusters[j]! + 1) * CS - 1).toString(16)}`);
    i = j + 1;
  }
  return out;
}

async function legendCount(page: Page, label: string | RegExp): Promise<number> {
  const item = page.getByRole('list', { name: 'Legend' }).getByRole('listitem').filter({ hasText: label });
  await expect(item).toBeVisible();
  return Number(/(\d[\d,]*)\s*(Clear)?\s*$/.exec(await item.innerText())![1]!.replace(/,/g, ''));
}

test('diff any two views: the changed clusters QEMU reads, their host clusters on the map', async ({ page, tmp }) => {
  const file = path.join(tmp, 'history.qcow2');
  createImage(file, '64M');
  qemuIoOk(file, 'write -P 0xab 0 1M');
  const mapS1 = qemuMap(file);
  qemuImgOk(['snapshot', '-c', 's1', file]);
  qemuIoOk(file, 'write -P 2 128k 64k', 'write -P 3 32M 128k');
  const mapS2 = qemuMap(file);
  qemuImgOk(['snapshot', '-c', 's2', file]);
  qemuIoOk(file, 'write -z 512k 64k', 'write -P 4 8M 64k');
  const mapActive = qemuMap(file);
  const raw = { s1: path.join(tmp, 's1.raw'), s2: path.join(tmp, 's2.raw'), active: path.join(tmp, 'active.raw') };
  qemuConvertToRaw(file, raw.s1, { name: 's1' });
  qemuConvertToRaw(file, raw.s2, { name: 's2' });
  qemuConvertToRaw(file, raw.active);
  const maps = { s1: mapS1, s2: mapS2, active: mapActive };
  const options = { s1: 'snapshot s1 (ID 1)', s2: 'snapshot s2 (ID 2)', active: 'the active disk' };

  await page.goto('/');
  await openViaInput(page, { path: file, name: 'history.qcow2' });
  const pairs: Array<['s1' | 's2' | 'active', 's1' | 's2' | 'active']> = [['s1', 's2'], ['s2', 'active'], ['active', 's1'], ['s2', 's2']];
  for (const [a, b] of pairs) {
    const changed = changedClusters(raw[a], raw[b]);
    const hosts = new Set<number>();
    for (const c of changed) for (const m of [maps[a], maps[b]]) {
      const h = hostOf(m, c);
      if (h !== undefined) hosts.add(h);
    }
    await showView(page, 'Diff');
    await page.getByLabel('Compare').selectOption({ label: options[a] });
    await page.getByLabel('with').selectOption({ label: options[b] });
    await page.getByRole('button', { name: 'Compare', exact: true }).click();
    const status = page.getByRole('status').filter({ hasText: /differs?/ });
    if (changed.length === 0) {
      await expect(page.getByText(/No guest cluster differs/)).toBeVisible();
      continue;
    }
    await expect(status).toContainText(`${changed.length} guest ${changed.length === 1 ? 'cluster differs' : 'clusters differ'}`);
    await expect(status).toContainText(`${hosts.size} host ${hosts.size === 1 ? 'cluster holds' : 'clusters hold'} them`);
    const rows = page.getByRole('table', { name: 'Changed guest clusters' }).locator('tbody tr td:first-child');
    await expect(rows).toHaveText(ranges(changed));

    await page.getByRole('button', { name: 'Show on the cluster map' }).click();
    await expect(page.getByRole('heading', { name: 'Cluster map', level: 2 })).toBeVisible();
    expect(await legendCount(page, 'Holds a cluster changed between')).toBe(hosts.size);
    // The first outlined cluster, reached by keyboard, says so in the inspector.
    const first = Math.min(...hosts);
    await page.locator('canvas').focus();
    await page.keyboard.press('Home');
    for (let i = 0; i < first; i++) await page.keyboard.press('ArrowRight');
    const inspector = page.getByRole('complementary', { name: 'Inspector' });
    await expect(inspector.getByRole('heading', { name: `Host cluster ${first}` })).toBeVisible();
    await expect(inspector).toContainText('Holds a cluster changed between');
  }

  // From a snapshot in the inspector straight to the Diff view, against the active disk.
  await showView(page, 'Snapshots');
  await page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 's1', exact: true }).click();
  await page.getByRole('complementary', { name: 'Inspector' }).getByRole('button', { name: 'Open in Diff' }).click();
  await expect(page.getByRole('heading', { name: 'Diff', level: 2 })).toBeVisible();
  await expect(page.getByLabel('Compare')).toHaveValue('1');
  const sinceS1 = changedClusters(raw.s1, raw.active).length;
  await expect(page.getByRole('status').filter({ hasText: /differ/ })).toContainText(`${sinceS1} guest clusters differ between snapshot s1 and the active disk`);
});

test('check findings are outlined on the cluster map', async ({ page, tmp }) => {
  const file = path.join(tmp, 'leaky.qcow2');
  makeDamagedImage('leaked-cluster', file);
  const q = qemuCheck(file);
  await page.goto('/');
  await openViaInput(page, { path: file, name: 'leaky.qcow2' });
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText(`${q.leaks} leaked clusters were found on the image.`)).toBeVisible();
  await page.getByRole('list', { name: 'Findings' }).getByRole('button').first().click();
  await page.getByRole('complementary', { name: 'Inspector' }).getByRole('button', { name: 'Show on the map' }).click();
  expect(await legendCount(page, 'Named in a check finding')).toBe(q.leaks);
  expect(await legendCount(page, 'Leaked')).toBe(q.leaks);
});
