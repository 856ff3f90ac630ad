// Hex, Annotate: on qemu-made images, every kind of structure is coloured and labelled, a byte
// selects its field, a bit range its bytes, the arrow keys move between fields, and the
// inspector's values are the ones qemu-img info / map report or the spec's formulas give on the
// file's own bytes (read here with Node, not through the app).
import type { Page } from '@playwright/test';
import * as path from 'node:path';
import { test, expect, openViaInput, showView } from './fixtures.ts';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { createImage, peekU32, peekU64, qemuImgOk, qemuInfo, qemuIoOk, qemuMap } from '../helpers/qemu.ts';

const grouped = (n: number | bigint) => n.toLocaleString('en-US');
const hexOf = (n: number | bigint) => `0x${n.toString(16)}`;

async function open(page: Page, file: string): Promise<void> {
  await page.goto('/');
  await openViaInput(page, { path: file, name: path.basename(file) });
  await showView(page, 'Hex');
  const toggle = page.getByRole('button', { name: 'Annotate', exact: true });
  await expect(toggle).toHaveAttribute('aria-pressed', 'false');
  await toggle.click();
  await expect(toggle).toHaveAttribute('aria-pressed', 'true');
}

/** Go to the structure whose "Go to" entry starts with `title`; its host offset. */
async function goTo(page: Page, title: string): Promise<number> {
  const option = page.locator('#hex-goto option').filter({ hasText: new RegExp(`^${title}`) });
  const value = (await option.getAttribute('value'))!;
  await page.getByLabel('Go to').selectOption(value);
  await expect(page.locator(`.hex [data-off="${value}"]`)).toBeVisible();
  return Number(value);
}

/** Click host byte `off`; the inspector then names `field`. */
async function pick(page: Page, off: number, field: string | RegExp): Promise<void> {
  await page.locator(`.hex [data-off="${off}"]`).click();
  await expect(page.getByTestId('field-name')).toHaveText(field);
}

const words = (page: Page) => page.getByTestId('field-words');
const range = (page: Page, name: string) => page.getByRole('list', { name: 'Bit ranges' }).getByRole('button', { name: new RegExp(`^${name} bit`) });

test('every structure of an image with snapshots and bitmaps, read as qemu-img and the spec read it', async ({ page, tmp }) => {
  const f = path.join(tmp, 'annotated.qcow2');
  createImage(f, '64M');
  qemuIoOk(f, 'write -P 0x11 0 128k');
  qemuImgOk(['snapshot', '-c', 'snapA', f]);
  qemuIoOk(f, 'write -P 0x12 64k 64k');
  qemuImgOk(['bitmap', '--add', f, 'dirty0']);
  const info = qemuInfo(f);
  const map = qemuMap(f);
  await open(page, f);
  await expect(page.getByRole('list', { name: 'Field colours' })).toContainText('offset');

  // header: a byte selects its field; the feature bits are shown bit by bit
  await pick(page, 22, 'cluster_bits');
  await expect(words(page)).toContainText(`clusters of ${grouped(info['cluster-size']!)} bytes`);
  await expect(page.locator('.hex .fsel')).toHaveCount(4);
  await pick(page, 30, 'size');
  await expect(words(page)).toContainText(`${grouped(info['virtual-size'])} bytes`);
  await pick(page, 95, 'autoclear_features');
  await expect(range(page, 'bitmaps')).toContainText('= 1'); // qemu-img info lists a bitmap
  await expect(words(page)).toHaveText('set: bitmaps');
  await range(page, 'bitmaps').click();
  await expect(page.getByTestId('bit-reading')).toContainText('bitmaps (bit 0): 1, set');
  await expect(page.locator('.hex .bsel')).toHaveCount(1); // bit 0 lives in the field's last byte
  await expect(page.locator('.hex .bsel')).toHaveAttribute('data-off', '95');
  // the arrow keys move between fields
  await page.locator('.hex [data-off="88"]').focus();
  await page.keyboard.press('ArrowRight');
  await expect(page.getByTestId('field-name')).toHaveText('refcount_order');
  await expect(page.locator('.hex [data-off="96"]')).toBeFocused();
  await page.keyboard.press('ArrowLeft');
  await expect(page.getByTestId('field-name')).toHaveText('autoclear_features');
  await page.keyboard.press('ArrowDown'); // byte 88 + 16 = 104
  await expect(page.getByTestId('field-name')).toHaveText('compression_type');
  await expect(page.locator('.hex [data-off="104"]')).toBeFocused();
  await page.keyboard.press('ArrowUp');
  await expect(page.getByTestId('field-name')).toHaveText('autoclear_features');

  // active L1 table: entry 0 as the file's bytes give it under the spec's masks
  const l1 = await goTo(page, 'Active L1 table');
  expect(l1).toBe(Number(peekU64(f, 40)));
  const l1e = peekU64(f, l1);
  await pick(page, l1 + 3, 'L1 table entry');
  await expect(range(page, 'L2 table offset')).toContainText(`= ${hexOf(l1e & 0x00fffffffffffe00n)}`);
  await expect(range(page, 'COPIED')).toContainText(`= ${l1e >> 63n}`);

  // the L2 table: guest offset 0 lives where qemu-img map says
  const data0 = map.find((m) => m.start === 0 && m.data)!;
  const l2 = await goTo(page, 'First L2 table');
  expect(l2).toBe(Number(l1e & 0x00fffffffffffe00n));
  await pick(page, l2 + 5, 'L2 table entry (standard cluster descriptor)');
  await expect(words(page)).toContainText(`host cluster offset: host offset ${hexOf(data0.offset!)}`);
  await range(page, 'host cluster offset').click();
  await expect(page.locator('.hex .bsel')).toHaveCount(6); // bits 9-55: bytes 1 to 6

  // refcount table and its first block: cluster 0 (the header) is referenced once, as the spec says
  const rt = await goTo(page, 'Refcount table');
  expect(rt).toBe(Number(peekU64(f, 48)));
  await pick(page, rt, 'refcount table entry');
  const rb = Number(peekU64(f, rt) & ~0x1ffn);
  await expect(range(page, 'refcount block offset')).toContainText(`= ${hexOf(rb)}`);
  await goTo(page, 'First refcount block');
  await pick(page, rb + 1, 'refcount');
  await expect(words(page)).toHaveText('host cluster 0 is referenced once');

  // snapshot table: the entry qemu-img info lists
  const sn = info.snapshots![0]!;
  const st = await goTo(page, 'Snapshot table');
  await pick(page, st + 16, 'date_sec');
  await expect(page.getByTestId('field-value')).toContainText(String(sn['date-sec']));
  const name = st + 40 + peekU32(f, st + 36) + (peekU32(f, st + 12) >>> 16); // after the extra data and the ID
  await pick(page, name, 'name');
  await expect(page.getByTestId('field-value')).toHaveText(`“${sn.name}”`);

  // bitmap directory: the bitmap qemu-img info lists, its flags bit by bit
  const bm = (info['format-specific']!.data['bitmaps'] as Array<{ name: string; granularity: number; flags: string[] }>)[0]!;
  const dir = await goTo(page, 'Bitmap directory');
  await pick(page, dir + 15, 'flags');
  await expect(range(page, 'auto')).toContainText(`= ${bm.flags.includes('auto') ? 1 : 0}`);
  await expect(range(page, 'in_use')).toContainText(`= ${bm.flags.includes('in-use') ? 1 : 0}`);
  await pick(page, dir + 17, 'granularity_bits');
  await expect(words(page)).toContainText(`one bit per ${grouped(bm.granularity)} bytes`);
  await pick(page, dir + 24, 'name');
  await expect(page.getByTestId('field-value')).toHaveText(`“${bm.name}”`);
});

test('compressed clusters (qemu-img convert -c) and extended L2 subclusters', async ({ page, tmp }) => {
  const src = path.join(tmp, 'plain.qcow2');
  createImage(src, '16M');
  qemuIoOk(src, 'write -P 0x21 0 64k');
  const f = path.join(tmp, 'compressed.qcow2');
  qemuImgOk(['convert', '-c', '-O', 'qcow2', src, f]);
  await open(page, f);
  const l2 = await goTo(page, 'First L2 table');
  await pick(page, l2, 'L2 table entry (compressed cluster descriptor)');
  // the spec's compressed descriptor on the file's own bytes: x = 62 - (cluster_bits - 8)
  const e = peekU64(f, l2);
  const x = 62n - (BigInt(peekU32(f, 20)) - 8n);
  await expect(range(page, 'compressed')).toContainText('= 1');
  await expect(range(page, 'host offset')).toContainText(`= ${hexOf(e & ((1n << x) - 1n))}`);
  await expect(range(page, 'additional sectors')).toContainText(`= ${hexOf((e >> x) & ((1n << (62n - x)) - 1n))}`);

  const g = path.join(tmp, 'extl2.qcow2');
  createImage(g, '16M', { extendedL2: true });
  qemuIoOk(g, 'write -P 0x31 0 2k', 'write -P 0x32 8k 4k');
  // subclusters of 2 KiB that qemu-img map says hold data in guest cluster 0
  const sub = 65536 / 32;
  const expected = qemuMap(g).filter((m) => m.data && m.start < 65536)
    .flatMap((m) => Array.from({ length: m.length / sub }, (_, i) => m.start / sub + i));
  await open(page, g);
  const l2x = await goTo(page, 'First L2 table');
  await pick(page, l2x + 12, 'subcluster allocation bitmap');
  await expect(words(page)).toHaveText(`subclusters ${expected.join(', ')}`);
  await pick(page, l2x + 8, 'subcluster zero bitmap');
  await expect(words(page)).toHaveText('no subcluster');
});

test('an image whose tables cannot be read still has its header annotated', async ({ page, tmp }) => {
  const f = path.join(tmp, 'l1-offset-unaligned.qcow2');
  makeDamagedImage('l1-offset-unaligned', f);
  await open(page, f);
  await pick(page, 44, 'l1_table_offset');
  await expect(page.getByTestId('field-value')).toContainText(hexOf(peekU64(f, 40)));
  await expect(words(page)).toContainText(`host offset ${hexOf(peekU64(f, 40))}`);
  // the tables are not opened: only the header is offered to go to
  await expect(page.locator('#hex-goto option')).toHaveText(['structure…', 'Header (0x0)']);
});

test('annotated, on a phone screen in both colour schemes, the page does not scroll sideways', async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  for (const colorScheme of ['light', 'dark'] as const) {
    await page.emulateMedia({ colorScheme });
    await page.goto('/');
    await page.getByRole('button', { name: 'Try the demo image' }).click();
    await showView(page, 'Hex');
    await page.getByRole('button', { name: 'Annotate', exact: true }).click();
    await goTo(page, 'First L2 table');
    const l2 = Number(await page.locator('#hex-goto').inputValue());
    await pick(page, l2, 'L2 table entry (standard cluster descriptor)');
    await expect(page.getByRole('list', { name: 'Bit ranges' })).toBeVisible();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBe(0);
  }
});
