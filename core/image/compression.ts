// Decompression of compressed clusters: raw deflate (QEMU's "zlib" type, windowBits −12, no zlib
// header) and zstd, through well-kept libraries (fflate, fzstd). Output is exactly one cluster;
// anything else is a corrupt cluster, reported with its host offset.
import { inflateSync } from 'fflate';
import { decompress as zstdDecompress } from 'fzstd';
import { QcowError, hex } from '../errors.ts';
import { COMPRESSION_ZSTD } from '../format/constants.ts';

export function decompressCluster(data: Uint8Array, clusterSize: number, compressionType: number, hostOffset: number): Uint8Array {
  try {
    if (compressionType === COMPRESSION_ZSTD) {
      // QEMU writes one zstd frame; the buffer may carry trailing sector padding after it.
      const out = zstdDecompress(trimZstd(data), new Uint8Array(clusterSize));
      if (out.length < clusterSize) throw new Error('short output');
      return out.subarray(0, clusterSize);
    }
    const out = new Uint8Array(clusterSize);
    const res = inflateSync(data, { out });
    if (res.length < clusterSize) throw new Error('short output');
    return res.length === clusterSize ? res : res.subarray(0, clusterSize);
  } catch (e) {
    throw new QcowError('COMPRESSED_DATA_INVALID', `Compressed cluster at host offset ${hex(hostOffset)} could not be decompressed`, {
      structure: 'compressed cluster', offset: hostOffset, reason: (e as Error).message,
    });
  }
}

/**
 * The compressed size covers whole sectors, so a zstd frame is followed by padding, which fzstd
 * would try to read as another frame. Walk the frame header and block headers (RFC 8878 §3.1.1)
 * to find where the frame ends.
 */
function trimZstd(data: Uint8Array): Uint8Array {
  if (data.length < 6 || data[0] !== 0x28 || data[1] !== 0xb5 || data[2] !== 0x2f || data[3] !== 0xfd) return data;
  const fhd = data[4]!;
  const fcsFlag = fhd >>> 6;
  const singleSegment = (fhd >>> 5) & 1;
  const checksum = (fhd >>> 2) & 1;
  const dictFlag = fhd & 3;
  let pos = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][dictFlag]! + [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (pos + 3 > data.length) return data;
    const bh = data[pos]! | (data[pos + 1]! << 8) | (data[pos + 2]! << 16);
    const last = bh & 1;
    const type = (bh >>> 1) & 3;
    const size = bh >>> 3;
    pos += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  pos += checksum ? 4 : 0;
  return pos <= data.length ? data.subarray(0, pos) : data;
}
