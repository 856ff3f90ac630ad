// Page addresses (web/links/address.ts): what a link says is read back the same, the rail's older
// #/view form still works, and nonsense in a fragment is ignored rather than trusted.
import { describe, expect, it } from 'vitest';
import { formatAddress, parseAddress } from '../../web/links/address.ts';

describe('page addresses', () => {
  it('round-trips every field, offsets in hex, keys in one order', () => {
    const a = { img: 'gallery:chain:base.qcow2', view: 'translate', sel: 'l2:0.4', offset: 0x48000, through: '2', lesson: 'byte', step: 3 };
    const hash = formatAddress(a);
    expect(hash).toBe('#img=gallery:chain:base.qcow2&view=translate&sel=l2:0.4&offset=0x48000&through=2&lesson=byte&step=3');
    expect(parseAddress(hash)).toEqual(a);
  });

  it('a file name with spaces, & and # survives', () => {
    const a = { img: 'file:my disk & more #2.qcow2', view: 'l1' };
    expect(parseAddress(formatAddress(a))).toEqual(a);
  });

  it('reads the rail’s #/view form and ignores offsets that are not numbers', () => {
    expect(parseAddress('#/map')).toEqual({ view: 'map' });
    expect(parseAddress('#view=translate&offset=12abc&step=x')).toEqual({ view: 'translate' });
    expect(parseAddress('')).toEqual({});
    expect(formatAddress({})).toBe('');
  });

  it('offsets past 2^53 are refused, offsets past 4 GiB kept exactly', () => {
    expect(parseAddress('#offset=0x20000000000000').offset).toBeUndefined();
    expect(parseAddress(formatAddress({ offset: 5 * 2 ** 32 + 0x1000 })).offset).toBe(5 * 2 ** 32 + 0x1000);
  });
});
