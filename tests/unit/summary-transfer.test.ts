// The summary's snapshot list sent in columns (worker/summary-transfer.ts): what the page rebuilds
// is the list the worker sent, field for field, including absent optional fields, for one summary
// and a list of them; small lists keep Comlink's ordinary cloning.
import * as Comlink from 'comlink';
import { describe, expect, it } from 'vitest';
import '../../worker/transfer.ts';
import type { ImageSummary, SnapshotDTO } from '../../worker/api.ts';

function summary(n: number): ImageSummary {
  const snapshots: SnapshotDTO[] = [];
  for (let i = 0; i < n; i++) {
    const s: SnapshotDTO = {
      id: String(i + 1), name: i % 7 === 0 ? '' : `snap "${i}"\u0000\u00e9`, l1TableOffset: i * 512 + 2 ** 40, l1Size: i % 3,
      vmStateSize: i % 2 ? 2 ** 33 : 0, dateSec: 1_700_000_000 + i, dateNsec: i * 1000, vmClockNsec: i * 1e9, extraDataSize: 24,
    };
    if (i % 2) s.diskSize = 64 * 2 ** 20;
    if (i % 5 === 0) s.icount = i;
    snapshots.push(s);
  }
  return { state: { writable: false } as ImageSummary['state'], header: { size: 1 } as ImageSummary['header'], snapshots, info: { format: 'qcow2' } };
}

const handler = Comlink.transferHandlers.get('summary-columns')!;

function roundTrip(v: unknown): unknown {
  const [wire, transfer] = handler.serialize(v);
  return handler.deserialize(structuredClone(wire, { transfer }));
}

describe('summary snapshot columns', () => {
  it('a summary with 65,535 snapshots comes back field for field', () => {
    const s = summary(65535);
    expect(handler.canHandle(s)).toBe(true);
    const back = roundTrip(s) as ImageSummary;
    expect(back).toEqual(s);
    expect('icount' in back.snapshots[1]!).toBe(false);
    expect(back.snapshots[10]!.icount).toBe(10);
  });

  it('a list of summaries (save, group operations) stays a list', () => {
    const list = [summary(3000), summary(2)];
    expect(handler.canHandle(list)).toBe(true);
    expect(roundTrip(list)).toEqual(list);
  });

  it('small lists and other values are left to ordinary cloning', () => {
    expect(handler.canHandle(summary(10))).toBe(false);
    expect(handler.canHandle({ snapshots: summary(2000).snapshots })).toBe(false);
    expect(handler.canHandle([])).toBe(false);
  });
});
