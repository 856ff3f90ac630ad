// "Run check" and repair through the UI on images damaged by the corruptor (tests/helpers), judged
// by `qemu-img check`: the same counts before, a clean image after repair and download.
import * as path from 'node:path';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { qemuCheck } from '../helpers/qemu.ts';
import { test, expect, makeImage, openViaInput } from './fixtures.ts';

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

    const download = page.waitForEvent('download');
    await page.getByRole('button', { name: 'Download image' }).click();
    const saved = path.join(tmp, 'repaired.qcow2');
    await (await download).saveAs(saved);
    const after = qemuCheck(saved);
    expect(after.exitCode, after.stderr).toBe(0);
  });
}
