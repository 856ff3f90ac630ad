// "Run check" and repair through the UI on images damaged by the corruptor (tests/helpers), judged
// by `qemu-img check`: the same counts before, a clean image after repair and download.
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { qemuCheck, qemuInfo, qemuIoOk, qemuSnapshotList } from '../helpers/qemu.ts';
import { test, expect, downloadImage, makeImage, openViaInput, showView } from './fixtures.ts';

test('a clean image reads "No errors were found on the image."', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'clean.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByRole('heading', { name: 'Check', exact: true })).toBeVisible();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
});

const CASES = [
  { damage: 'refcount-too-high-data-copied-cleared', button: 'Repair leaks', text: '1 leaked clusters were found on the image.' },
  { damage: 'refcount-too-low-data', button: 'Repair all', text: 'errors were found on the image.' },
];

for (const c of CASES) {
  test(`check and repair: ${c.damage}`, async ({ page, tmp }) => {
    const file = path.join(tmp, `${c.damage}.qcow2`);
    const d = makeDamagedImage(c.damage, file);
    const q = qemuCheck(file);
    expect(q.exitCode).toBe(d.expect.check.exitCode);
    await page.goto('/');
    await openViaInput(page, { path: file, name: path.basename(file) });
    await page.getByRole('button', { name: 'Run check' }).click();
    await expect(page.getByText(c.text)).toBeVisible();
    const findings = page.getByRole('list', { name: 'Findings' });
    for (const m of d.expect.checkMessages ?? []) await expect(findings).toContainText(m);
    if (q.corruptions) await expect(page.getByText(`${q.corruptions} errors were found on the image.`)).toBeVisible();
    if (q.leaks) await expect(page.getByText(`${q.leaks} leaked clusters were found on the image.`)).toBeVisible();

    await page.getByRole('button', { name: c.button }).click();
    await expect(page.getByText('The following inconsistencies were found and repaired')).toBeVisible();
    await expect(page.getByText('No errors were found on the image.')).toBeVisible();

    const saved = await downloadImage(page, path.join(tmp, 'repaired.qcow2'));
    const after = qemuCheck(saved);
    expect(after.exitCode, after.stderr).toBe(0);
  });
}

test('a dirty image (lazy refcounts, qemu-io killed) is read-only until Repair all, then takes a snapshot', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'dirty.qcow2', { lazyRefcounts: true }, ['snapA']);
  spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 0 64k', '-c', 'write -P 0x23 2M 64k', '-c', 'sigraise 9', f.path]);
  expect(qemuInfo(f.path)['dirty-flag']).toBe(true);
  const q = qemuCheck(f.path);
  expect(q.corruptions).toBeGreaterThan(0);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  await expect(page.getByText(/The dirty bit is set/)).toBeVisible();
  await expect(page.getByRole('button', { name: 'Create snapshot' })).toBeDisabled();

  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText(`${q.corruptions} errors were found on the image.`)).toBeVisible();
  await page.getByRole('button', { name: 'Repair all' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();

  await showView(page, 'Snapshots');
  await expect(page.getByText(/The dirty bit is set/)).toHaveCount(0);
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('after');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'after', exact: true })).toBeVisible();

  const saved = await downloadImage(page, path.join(tmp, 'saved.qcow2'));
  const after = qemuCheck(saved);
  expect(after.exitCode, after.stderr).toBe(0);
  expect(qemuInfo(saved)['dirty-flag']).toBe(false);
  expect(qemuSnapshotList(saved).map((s) => s.name)).toEqual(['snapA', 'after']);
  qemuIoOk(saved, 'read -P 0x22 0 64k', 'read -P 0x23 2M 64k');
});

for (const damage of ['corrupt-bit', 'dirty-bit']) {
  test(`${damage} on a consistent image: the check is clean, Repair all clears the flag and the image is writable again`, async ({ page, tmp }) => {
    const file = path.join(tmp, `${damage}.qcow2`);
    makeDamagedImage(damage, file);
    expect(qemuCheck(file).exitCode).toBe(0);
    await page.goto('/');
    await openViaInput(page, { path: file, name: path.basename(file) });
    await page.getByRole('button', { name: 'Run check' }).click();
    await expect(page.getByText('No errors were found on the image.')).toBeVisible();
    await page.getByRole('button', { name: 'Repair all' }).click();
    await expect(page.getByRole('button', { name: 'Repair all' })).toHaveCount(0);
    await showView(page, 'Snapshots');
    await page.getByRole('textbox', { name: 'Snapshot name' }).fill('s');
    await page.getByRole('button', { name: 'Create snapshot' }).click();
    await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 's', exact: true })).toBeVisible();
    const saved = await downloadImage(page, path.join(tmp, 'saved.qcow2'));
    expect(qemuCheck(saved).exitCode).toBe(0);
    const info = qemuInfo(saved);
    expect(info['dirty-flag']).toBe(false);
    expect((info['format-specific'] as { data: { corrupt: boolean } }).data.corrupt).toBe(false);
  });
}
