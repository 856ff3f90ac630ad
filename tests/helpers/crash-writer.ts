// Child process for the QCOWSCOPE_CRASH_AFTER_WRITES test (tests/unit/stores.test.ts): opens FILE
// with the Node file store and makes three writes, 512 bytes of 0x01, 0x02, 0x03 at offsets
// 0, 512, 1024, flushing after each. With the variable set to K the store must end the process
// (exit 75) just before write K+1, so exactly K of them reach the file.
// Run: node --import tsx tests/helpers/crash-writer.ts FILE
import { NodeFileStore } from '../../cli/node-file-store.ts';

const file = process.argv[2];
if (!file) {
  console.error('usage: crash-writer FILE');
  process.exit(2);
}
const store = NodeFileStore.open(file, { writable: true });
for (let i = 0; i < 3; i++) {
  await store.write(i * 512, new Uint8Array(512).fill(i + 1));
  await store.flush();
}
await store.close();
console.log('done');
