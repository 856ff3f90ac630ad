// The one parser for every offset and length a person types into the page (Translation,
// Playground, Hex): decimal or 0x hex, with qemu-img's k/M/G/T/P/E suffixes (powers of 1024, "KiB"
// and "KB" spellings too, a fraction allowed with a suffix, "1.5M"). The same text means the same
// number in every field.

const POWERS = 'kmgtpe';

/** The byte count `text` names, or null when it names none (or one past 2^53). */
export function parseSize(text: string): number | null {
  const m = /^\s*(0x[0-9a-f]+|\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtpe])(?:i?b)?|b)?\s*$/i.exec(text);
  if (!m) return null;
  const n = m[1]!.toLowerCase().startsWith('0x') ? parseInt(m[1]!, 16) : Number(m[1]);
  const v = n * (m[2] ? 1024 ** (POWERS.indexOf(m[2].toLowerCase()) + 1) : 1);
  return Number.isSafeInteger(v) ? v : null;
}

/** What to say when a field's text is no size: `what` is the field ("Guest offset"). */
export function sizeError(what: string, text: string): string {
  return `${what}: “${text.trim()}” is not a number of bytes. Type it in decimal or 0x hex, with an optional k, M, G, T, P or E suffix (64k, 900M, 0x10000).`;
}

/** The largest guest write the page offers (the worker refuses more). */
export const MAX_PATTERN_WRITE = 16 << 20;

/** A pattern write's three fields (Playground, Crash stage), parsed, or what is wrong with them. */
export function parsePatternWrite(offset: string, length: string, pattern: string): { offset: number; length: number; pattern: number } | { error: string } {
  const off = parseSize(offset);
  const len = parseSize(length);
  const pat = parseSize(pattern);
  if (off === null) return { error: sizeError('Guest offset', offset) };
  if (len === null) return { error: sizeError('Length', length) };
  if (len === 0 || len > MAX_PATTERN_WRITE) return { error: 'Length: write between 1 byte and 16 MiB.' };
  if (pat === null || pat > 255) return { error: `Byte: “${pattern.trim()}” is not a byte value (0 to 255, or 0x00 to 0xff).` };
  return { offset: off, length: len, pattern: pat };
}
