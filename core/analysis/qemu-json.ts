// JSON text as qemu-img prints it (QEMU's qobject_to_json_pretty): four-space indentation, empty
// lists and dictionaries still broken over two lines, and every character outside printable
// ASCII escaped as \uXXXX (upper-case hex, UTF-16 surrogate pairs above U+FFFF).

/** `value` as qemu-img's --output=json would print it (keys in the object's own order). */
export function toQemuJson(value: unknown, indent = 0): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  const pad = ' '.repeat(indent + 4);
  const items = Array.isArray(value)
    ? value.map((v) => pad + toQemuJson(v, indent + 4))
    : Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${pad}${quote(k)}: ${toQemuJson(v, indent + 4)}`);
  const [open, close] = Array.isArray(value) ? ['[', ']'] : ['{', '}'];
  return `${open}\n${items.join(',\n')}${items.length ? '\n' : ''}${' '.repeat(indent)}${close}`;
}

const SHORT: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function quote(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    const code = s.charCodeAt(i);
    if (SHORT[ch] !== undefined) out += SHORT[ch];
    else if (code < 0x20 || code >= 0x7f) out += '\\u' + code.toString(16).toUpperCase().padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}
