// One racing writer of `lockfs demo`: CYCLES load-modify-save cycles on a JSON store,
// each adding the key ID-N: readFile, parse, add, writeFile(temp), rename(temp, store).
'use strict';
const fs = require('fs');
const path = require('path');
const [store, id, cycles] = process.argv.slice(2);
(async () => {
  for (let i = 0; i < Number(cycles); i++) {
    const data = JSON.parse(await fs.promises.readFile(store, 'utf8'));
    data[`${id}-${i}`] = i;
    const tmp = path.join(path.dirname(store), `.${path.basename(store)}.${process.pid}.${i}.tmp`);
    await fs.promises.writeFile(tmp, JSON.stringify(data));
    await fs.promises.rename(tmp, store);
  }
})().catch((err) => {
  console.error(`writer ${id}: ${err.message}`);
  process.exit(1);
});
