// The playground on the demo image: a write into a cluster a snapshot shares is copied first;
// the journal shows the writes; QEMU reads the pattern back from the download and finds it clean.
import * as path from 'node:path';
import { qemuCheck, verifyPattern } from '../helpers/qemu.ts';
import { test, expect, downloadImage, showView } from './fixtures.ts';

test('a write into a shared cluster is copy-on-write; QEMU reads it back', async ({ page, tmp }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Playground');
  await page.getByLabel('Guest offset').fill('0x10000');
  await page.getByLabel('Length').fill('4096');
  await page.getByLabel('Byte').fill('0x5a');
  await page.getByRole('button', { name: 'Write', exact: true }).click();
  await expect(page.getByText('so the write went to a copy: copy-on-write')).toBeVisible();
  await expect(page.getByRole('heading', { name: 'What the write did' })).toBeVisible();

  const saved = await downloadImage(page, path.join(tmp, 'demo-written.qcow2'));
  expect(qemuCheck(saved).exitCode).toBe(0);
  expect(verifyPattern(saved, 0x10000, 4096, 0x5a)).toBe(true);
});
