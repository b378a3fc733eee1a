'use strict'
// Runs one benchmark area by name: node bench/try.js ports
const area = require(`./${process.argv[2]}.js`)
area({ runs: Number(process.argv[3] || 20) }).then((r) => console.log(JSON.stringify(r, null, 1)))
