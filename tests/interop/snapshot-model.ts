// A model of a qcow2 image's guest-visible state for snapshot tests: the active disk and every
// snapshot as bytes, compared against what QEMU reads (`qemu-img convert -O raw [-l
// snapshot.id=N]`, `qemu-img info`), with `qemu-img check` clean after every step.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { openImage, type CliOpenOptions } from '../../cli/open.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { qemuCheck, qemuConvertToRaw, qemuInfo } from '../helpers/qemu.ts';

export interface ModelSnapshot {
  id: string;
  name: string;
  content: Buffer;
}

export class ImageModel {
  active: Buffer;
  snapshots: ModelSnapshot[] = [];

  constructor(readonly file: string, size: number) {
    this.active = Buffer.alloc(size);
  }

  write(offset: number, len: number, pattern: number): void {
    this.active.fill(pattern, offset, offset + len);
  }

  resize(size: number): void {
    const b = Buffer.alloc(size);
    this.active.copy(b, 0, 0, Math.min(size, this.active.length));
    this.active = b;
  }

  nextId(): string {
    let max = 0;
    for (const s of this.snapshots) max = Math.max(max, Number(s.id) || 0);
    return String(max + 1);
  }

  create(name: string, id = this.nextId()): ModelSnapshot {
    const s = { id, name, content: Buffer.from(this.active) };
    this.snapshots.push(s);
    return s;
  }

  /** ID first, then name (QEMU's find_snapshot_by_id_or_name). */
  find(idOrName: string): ModelSnapshot | undefined {
    return this.snapshots.find((s) => s.id === idOrName) ?? this.snapshots.find((s) => s.name === idOrName);
  }

  revert(idOrName: string): void {
    const s = this.find(idOrName)!;
    this.active = Buffer.from(s.content);
  }

  delete(idOrName: string): void {
    const s = this.find(idOrName)!;
    this.snapshots = this.snapshots.filter((x) => x !== s);
  }

  /** qemu-img check clean, snapshot list and every disk's bytes as modelled. */
  verify(tmpDir: string, label = ''): void {
    const chk = qemuCheck(this.file);
    expect(chk.stderr + JSON.stringify(chk.json), `check ${label}`).not.toMatch(/ERROR|Leaked/);
    expect(chk.exitCode, `check exit ${label}: ${chk.stderr}`).toBe(0);
    const info = qemuInfo(this.file);
    expect((info.snapshots ?? []).map((s) => [s.id, s.name]), `snapshot list ${label}`).toEqual(this.snapshots.map((s) => [s.id, s.name]));
    expect(info['virtual-size'], `virtual size ${label}`).toBe(this.active.length);
    const out = path.join(tmpDir, 'out.raw');
    qemuConvertToRaw(this.file, out);
    expect(fs.readFileSync(out).equals(this.active), `active content ${label}`).toBe(true);
    for (const s of this.snapshots) {
      qemuConvertToRaw(this.file, out, { id: s.id });
      const got = fs.readFileSync(out);
      // convert -l (QEMU's load_tmp) reads a snapshot at the image's current disk size.
      const want = Buffer.alloc(this.active.length);
      s.content.copy(want, 0, 0, Math.min(want.length, s.content.length));
      expect(got.length, `snapshot ${s.id} size ${label}`).toBe(want.length);
      expect(got.equals(want), `snapshot ${s.id} (${s.name}) content ${label}`).toBe(true);
    }
    fs.rmSync(out, { force: true });
  }
}

/** Open writable (with `opts`), run, close (also on failure). */
export async function withImage<T>(file: string, fn: (img: Qcow2Image) => Promise<T>, opts: CliOpenOptions = {}): Promise<T> {
  const img = await openImage(file, { writable: true, noBacking: true, ...opts });
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}
