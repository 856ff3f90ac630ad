// Comlink transfer handlers shared by both ends of the worker boundary. Comlink's default keeps
// only name/message/stack of a thrown error; QcowError's `code` and `details` are what the UI
// branches on, so they cross intact — thrown (the 'throw' handler) or passed as a value, in both
// directions. Imported for its side effect by worker/engine.worker.ts and web/lib/engine.ts.
import * as Comlink from 'comlink';
import { QcowError, type QcowErrorCode } from '../core/errors.ts';
import type { WireQcowError } from './api.ts';
import { installSummaryTransfer } from './summary-transfer.ts';

interface SerializedThrow {
  isError: boolean;
  value: unknown;
  qcow?: WireQcowError & { stack?: string };
}

function toWire(e: QcowError): WireQcowError & { stack?: string } {
  // details may hold bigint/number/string values: all structured-clone safe. Drop anything that is not.
  let details: Record<string, unknown>;
  try {
    details = structuredClone(e.details);
  } catch {
    details = JSON.parse(JSON.stringify(e.details, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)));
  }
  return { name: 'QcowError', code: e.code, message: e.message, details, stack: e.stack };
}

function fromWire(w: WireQcowError & { stack?: string }): QcowError {
  const e = QcowError.fromJSON({ code: w.code as QcowErrorCode, message: w.message, details: w.details });
  if (w.stack) e.stack = w.stack;
  return e;
}

let installed = false;

export function installTransferHandlers(): void {
  if (installed) return;
  installed = true;
  const original = Comlink.transferHandlers.get('throw') as Comlink.TransferHandler<{ value: unknown }, SerializedThrow>;
  Comlink.transferHandlers.set('throw', {
    canHandle: (v: unknown): v is { value: unknown } => original.canHandle(v),
    serialize(thrown: { value: unknown }): [SerializedThrow, Transferable[]] {
      if (thrown.value instanceof QcowError) return [{ isError: true, value: null, qcow: toWire(thrown.value) }, []];
      return original.serialize(thrown);
    },
    deserialize(s: SerializedThrow): { value: unknown } {
      if (s.qcow) throw fromWire(s.qcow);
      return original.deserialize(s);
    },
  } satisfies Comlink.TransferHandler<{ value: unknown }, SerializedThrow>);
  Comlink.transferHandlers.set('qcow-error', {
    canHandle: (v: unknown): v is QcowError => v instanceof QcowError,
    serialize: (e: QcowError) => [toWire(e), []],
    deserialize: (w: WireQcowError & { stack?: string }) => fromWire(w),
  } satisfies Comlink.TransferHandler<QcowError, WireQcowError & { stack?: string }>);
  installSummaryTransfer();
}

installTransferHandlers();
