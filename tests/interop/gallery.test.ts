// The gallery's images (core/gallery/recipes.ts), built by the engine, against the same recipe
// run with qemu-img / qemu-io: the same guest content (qemu-img compare, every file of a chain),
// the same qemu-img check result (and the recipe's stated verdict), the same qemu-img info fields
// and snapshot list.
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GALLERY, buildGalleryImage } from '../../core/gallery/recipes.ts';
import { qemuCheck, qemuImg, qemuInfo, type QemuInfo } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { runRecipeWithQemu } from '../helpers/recipe-qemu.ts';

/** The info fields that describe the image itself (not its file on this disk or the time it was made). */
function infoFields(i: QemuInfo) {
  return {
    'virtual-size': i['virtual-size'],
    'cluster-size': i['cluster-size'],
    'dirty-flag': i['dirty-flag'],
    'backing-filename': i['backing-filename'],
    'backing-filename-format': i['backing-filename-format'],
    'format-specific': i['format-specific'],
    snapshots: (i.snapshots ?? []).map((s) => ({ id: s.id, name: s.name, 'vm-state-size': s['vm-state-size'], 'vm-clock-sec': s['vm-clock-sec'] })),
  };
}

describe('gallery images: the engine builds what the recipe makes with QEMU', () => {
  const tmp = useTempDir('qcowscope-gallery-');
  for (const recipe of GALLERY) {
    it(`${recipe.id}: ${recipe.title}`, async () => {
      const qemuDir = path.join(tmp.dir, 'qemu');
      const oursDir = path.join(tmp.dir, 'ours');
      fs.mkdirSync(qemuDir);
      fs.mkdirSync(oursDir);
      runRecipeWithQemu(recipe.commands, qemuDir);
      const files = await buildGalleryImage(recipe);
      expect(files.map((f) => f.name).sort()).toEqual(fs.readdirSync(qemuDir).sort());
      for (const f of files) fs.writeFileSync(path.join(oursDir, f.name), f.bytes);

      for (const f of files) {
        const q = path.join(qemuDir, f.name);
        const o = path.join(oursDir, f.name);
        const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', q, o]);
        expect(cmp.stdout.trim(), `${f.name}: ${cmp.stderr}`).toBe('Images are identical.');
        expect(infoFields(qemuInfo(o)), f.name).toEqual(infoFields(qemuInfo(q)));
        const cq = qemuCheck(q);
        const co = qemuCheck(o);
        expect({ corruptions: co.corruptions, leaks: co.leaks, exit: co.exitCode }, f.name).toEqual({ corruptions: cq.corruptions, leaks: cq.leaks, exit: cq.exitCode });
      }
      // The image shown (the last file made) has the verdict the gallery states.
      const shown = qemuCheck(path.join(oursDir, files[files.length - 1]!.name));
      expect({ corruptions: shown.corruptions, leaks: shown.leaks }).toEqual(recipe.verdict);
    });
  }
});

describe('gallery images are deterministic (a link shows everyone the same bytes)', () => {
  it('every recipe builds the same bytes twice', async () => {
    for (const recipe of GALLERY) {
      const a = await buildGalleryImage(recipe);
      const b = await buildGalleryImage(recipe);
      expect(b.map((f) => f.name), recipe.id).toEqual(a.map((f) => f.name));
      a.forEach((f, i) => expect(Buffer.compare(Buffer.from(f.bytes), Buffer.from(b[i]!.bytes)), `${recipe.id} ${f.name}`).toBe(0));
    }
  });
});
