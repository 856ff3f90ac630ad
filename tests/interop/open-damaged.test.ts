// The browser's partial open of images that fail validation (worker/engine-adapter.ts openDamaged),
// over the whole damage catalogue (tests/helpers/corruptor.ts): every image QEMU refuses to open is
// refused by the engine too, and still opens as far as it can be read — at the level the engine's
// own check-mode open and header parser allow — with one line naming the structure and offset.
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DAMAGES, makeDamagedImage } from '../helpers/corruptor.ts';
import { makeTempDir, qemuImg, removeDir } from '../helpers/qemu.ts';
import { openDamaged, openImage } from '../../worker/engine-adapter.ts';
import { NodeFileStore } from '../../cli/node-file-store.ts';
import { isQcowError } from '../../core/errors.ts';

const dir = makeTempDir('qcowscope-open-damaged-');
afterAll(() => removeDir(dir));

/** The structure a QEMU open error names, as an OpenDamage area code. */
function areaNamedBy(qemuMessage: string): string {
  if (/snapshot/i.test(qemuMessage)) return 'snapshot-table';
  if (/refcount block/i.test(qemuMessage)) return 'refcount-block';
  if (/refcount|reference count/i.test(qemuMessage)) return 'refcount-table';
  if (/\bL1\b/.test(qemuMessage)) return 'l1-table';
  if (/\bL2\b/.test(qemuMessage)) return 'l2-table';
  if (/bitmap/i.test(qemuMessage)) return 'bitmaps';
  return 'header';
}

const refused = Object.entries(DAMAGES).filter(([, d]) => d.expect.openError !== undefined);

describe('partial open of images QEMU refuses', () => {
  it('the catalogue has such images', () => expect(refused.length).toBeGreaterThanOrEqual(10));

  for (const [name, d] of refused) {
    it(name, async () => {
      const file = path.join(dir, `${name}.qcow2`);
      makeDamagedImage(name, file);
      expect(qemuImg(['info', file]).stderr).toContain(d.expect.openError!);
      const error = await openImage(NodeFileStore.open(file)).then(() => null, (e: unknown) => e);
      expect(isQcowError(error), `${name} opened whole`).toBe(true);
      const partial = await openDamaged(NodeFileStore.open(file), error);
      expect(partial).not.toBeNull();
      const { engine, damage } = partial!;
      // QEMU's words (qemu-img may add a prefix, we may add detail).
      const open = d.expect.openError!;
      expect(damage.message.includes(open) || open.includes(damage.message), `${damage.message} vs ${open}`).toBe(true);
      const details = (error as { details: { structure?: string; offset?: number } }).details;
      if (details.structure) expect(damage.line).toContain(details.structure);
      if (typeof details.offset === 'number') expect(damage.line).toContain(`0x${details.offset.toString(16)}`);
      expect(damage.line).not.toContain('\n');
      // The area code (which view shows the note) is the structure QEMU's own words name.
      expect(damage.area, `${name}: ${open}`).toBe(areaNamedBy(open));
      // The header always shows, with qcow2's magic; tables only when the check-mode open worked.
      expect(engine.header().magic).toBe(0x514649fb);
      if (damage.level === 'tables') await expect(engine.l1Page(0, 4)).resolves.toBeInstanceOf(Array);
      else await expect(engine.l1Page(0, 4)).rejects.toMatchObject({ code: damage.code });
    });
  }
});
