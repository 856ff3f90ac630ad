// Exact answers on the page, judged by QEMU: the map's "Data (snapshots only)" count, what deleting
// one snapshot or all of them frees, a snapshot's own clusters outlined on the map, a translation
// that follows the backing chain (depth and offset as qemu-img map), and the preallocation hint.
import type { Page } from '@playwright/test';
import { qemuImgOk, qemuInfo, qemuIoOk, qemuMap } from '../helpers/qemu.ts';
import { readHeader } from '../helpers/qcow2-mini.ts';
import { freedByDeleting, snapshotData } from '../helpers/snapshot-oracle.ts';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';

/** The legend's count for a kind label ("Data (active only) 7" → 7), 0 when absent. */
async function legendCount(page: Page, label: string): Promise<number> {
  const item = page.getByRole('list', { name: 'Legend' }).getByRole('listitem').filter({ hasText: label });
  if ((await item.count()) === 0) return 0;
  const text = (await item.innerText()).replace(label, '');
  return Number(/[\d,]+/.exec(text)![0].replace(/,/g, ''));
}

/** s1 and s2 share clusters the active disk overwrote; s3 alone holds one more. */
function snapshotImage(tmp: string) {
  const f = makeImage(tmp, 'snaps.qcow2', {}, []);
  qemuIoOk(f.path, 'write -P 1 0 256k');
  qemuImgOk(['snapshot', '-c', 's1', f.path]);
  qemuImgOk(['snapshot', '-c', 's2', f.path]);
  qemuIoOk(f.path, 'write -P 2 0 256k', 'write -P 3 1M 64k');
  qemuImgOk(['snapshot', '-c', 's3', f.path]);
  qemuIoOk(f.path, 'write -P 4 1M 64k');
  return f;
}

test('snapshots: the map counts what only snapshots hold, and what deleting them frees is what qemu-img frees', async ({ page, tmp }) => {
  const f = snapshotImage(tmp);
  const cs = readHeader(f.path).clusterSize;
  const { onlySnapshots } = snapshotData(f.path, ['s1', 's2', 's3'], tmp);
  const freedAll = freedByDeleting(f.path, ['s1', 's2', 's3'], tmp);
  const freedS3 = freedByDeleting(f.path, ['s3'], tmp);
  await page.goto('/');
  await openViaInput(page, f);

  await showView(page, 'Cluster map');
  await expect(page.getByRole('list', { name: 'Legend' })).toBeVisible();
  expect(await legendCount(page, 'Data (snapshots only)')).toBe(onlySnapshots.length);

  await showView(page, 'Snapshots');
  await expect(page.getByTestId('all-snapshots-space')).toContainText(`Deleting all 3 snapshots frees ${freedAll} clusters`);

  // s3's own clusters: the count, the list of offsets, and the outline on the map.
  await page.getByRole('row').filter({ hasText: 's3' }).getByRole('cell', { name: 's3' }).click();
  const inspector = page.getByRole('complementary', { name: 'Inspector' });
  await expect(inspector).toContainText(`Held only by this snapshot${freedS3} clusters`);
  const list = inspector.getByRole('list', { name: 'Host clusters only s3 holds' });
  const listed = (await list.getByRole('listitem').allInnerTexts()).join(' ');
  // The data cluster only s3 holds (by qemu-img map of s3 applied, not in the active disk nor in s1 or s2) is listed.
  const s3Only = snapshotData(f.path, ['s3'], tmp).onlySnapshots.filter((c) => !snapshotData(f.path, ['s1', 's2'], tmp).onlySnapshots.includes(c));
  expect(s3Only.length).toBe(1);
  expect(listed).toContain(`0x${(s3Only[0]! * cs).toString(16)}`);
  await inspector.getByRole('button', { name: 'Outline them on the map' }).click();
  await expect(page.getByRole('heading', { name: 'Cluster map', level: 2 })).toBeVisible();
  expect(await legendCount(page, 'Held only by snapshot s3')).toBe(freedS3);
});

test('translation follows the backing chain, and names a backing file that is not open yet', async ({ page, tmp }) => {
  const base = makeImage(tmp, 'base.qcow2', {}, []);
  const mid = makeImage(tmp, 'mid.qcow2', { backing: base.path }, []);
  const top = makeImage(tmp, 'top.qcow2', { backing: mid.path }, []);
  qemuIoOk(base.path, 'write -P 0x55 3M 64k');
  qemuIoOk(mid.path, 'write -P 0x66 2M 64k');
  qemuIoOk(top.path, 'write -P 0x77 1M 64k');
  const map = qemuMap(top.path);
  const at = (g: number) => map.find((e) => e.start <= g && g < e.start + e.length)!;
  await page.goto('/');
  await openViaInput(page, top);
  await showView(page, 'Translation');
  const answer = page.locator('.answer');
  const ask = async (g: number) => {
    await page.getByLabel('Guest offset').fill(`0x${g.toString(16)}`);
    await page.getByRole('button', { name: 'Translate' }).click();
    await expect(answer).toContainText(`Guest 0x${g.toString(16)}`);
    // Plain words, not a result code ("Guest 0x…: beyond-end."), in every answer.
    expect(await answer.innerText()).not.toMatch(/: [a-z]+(-[a-z]+)*\.$/);
  };
  await ask(0x200000);
  await expect(answer).toContainText(`is in the backing file (not opened yet): ${qemuInfo(top.path)['backing-filename']}.`);

  await showView(page, 'Header');
  await page.getByLabel('Backing file').setInputFiles([base.path, mid.path]);
  await expect(page.getByRole('note')).toContainText('opened as its backing file');
  await showView(page, 'Translation');
  for (const [g, file] of [[0x200000 + 5, 'mid.qcow2'], [0x300010, 'base.qcow2']] as const) {
    const e = at(g);
    expect(e.depth).toBe(file === 'mid.qcow2' ? 1 : 2);
    await ask(g);
    await expect(answer).toContainText(`is in the backing file ${file} (depth ${e.depth}): at offset 0x${(e.offset! + g - e.start).toString(16)} (cluster`);
  }
  await ask(0x100000);
  expect(at(0x100000).depth).toBe(0);
  await expect(answer).toContainText(`is at host offset 0x${at(0x100000).offset!.toString(16)}`);
  await ask(0x7000000);
  await expect(answer).toContainText('is past the end of the disk.');
});

test('a metadata-preallocated image: the Data category says its clusters may never have been written', async ({ page, tmp }) => {
  const pre = makeImage(tmp, 'pre.qcow2', { preallocation: 'metadata' }, []);
  const plain = makeImage(tmp, 'plain.qcow2', {}, []);
  await page.goto('/');
  await openViaInput(page, pre);
  await showView(page, 'Cluster map');
  await expect(page.getByTestId('prealloc-hint')).toHaveText('(allocated in the tables, may never have been written)');
  await openViaInput(page, plain);
  await showView(page, 'Cluster map');
  await expect(page.getByRole('list', { name: 'Legend' })).toBeVisible();
  await expect(page.getByTestId('prealloc-hint')).toHaveCount(0);
});
