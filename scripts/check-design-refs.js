#!/usr/bin/env node
'use strict'
// Source comments give their reason as a citation of docs/design.md: the file name followed by a section sign
// and a number, a range ("1-3"), a list (", 19") or the word "decision" and a number, possibly on the next
// comment line. Each decision there has a heading of its own ("### 11. Readiness must be the backend's own"),
// so a citation whose number has no heading points at nothing: renumbered, removed or never written. This
// check fails then, naming file:line and the number. Run by `npm test` before the other tests.
const fs = require('node:fs')
const path = require('node:path')

const root = path.resolve(__dirname, '..')
const DESIGN = path.join(root, 'docs', 'design.md')
const SCANNED = ['src', 'crates', 'lib', 'index.js', 'cli.js', 'scripts', 'bench', '__test__']
const TEXT = /\.(rs|js|cjs|mjs|ts|sh|py|md|toml|json)$/
const SKIPPED_DIRS = new Set(['node_modules', 'target', '.cache'])

/** The decision numbers that have a heading in docs/design.md ("## 7. …", "### 7. …"). */
function headings(text) {
  const numbers = new Set()
  for (const match of text.matchAll(/^#{2,6}\s+(\d+)\.\s/gm)) numbers.add(Number(match[1]))
  return numbers
}

function* files(entry) {
  const full = path.join(root, entry)
  if (!fs.existsSync(full)) return
  if (fs.statSync(full).isFile()) {
    if (TEXT.test(full)) yield full
    return
  }
  for (const dirent of fs.readdirSync(full, { withFileTypes: true })) {
    if (dirent.isDirectory() && SKIPPED_DIRS.has(dirent.name)) continue
    yield* files(path.join(entry, dirent.name))
  }
}

// What follows the file name: "§4", "§1-3", "§3, §19", "§3 and §19", "decision 29", "decisions 21-23".
const ITEM = String.raw`(?:§\s*|decisions?\s+)?(\d+)(?:\s*[-–]\s*(\d+))?`
const REFS = new RegExp(String.raw`^\s*(?:§\s*|decisions?\s+)(\d+)(?:\s*[-–]\s*(\d+))?((?:\s*(?:,|and)\s*${ITEM})*)`, 'i')
const COMMENT_START = /^\s*(?:\/\/[!/]?|\/?\*+|#)\s?/

function expand(from, to) {
  const a = Number(from)
  const b = to === undefined ? a : Number(to)
  const numbers = []
  for (let n = a; n <= b && numbers.length < 100; n++) numbers.push(n)
  return numbers
}

/** Every cited number in `text`, with its line (1-based). */
function citations(text) {
  const lines = text.split('\n')
  const found = []
  lines.forEach((line, index) => {
    for (const match of line.matchAll(/design\.md/gi)) {
      let rest = line.slice(match.index + match[0].length)
      // The citation may continue on the next comment line: "…; docs/design.md" / "//! decision 29) …".
      if (rest.trim() === '' && index + 1 < lines.length) rest = lines[index + 1].replace(COMMENT_START, '')
      const refs = REFS.exec(rest)
      if (!refs) continue
      const numbers = expand(refs[1], refs[2])
      for (const item of refs[3].matchAll(new RegExp(ITEM, 'gi'))) numbers.push(...expand(item[1], item[2]))
      for (const number of numbers) found.push({ line: index + 1, number })
    }
  })
  return found
}

function main() {
  const known = headings(fs.readFileSync(DESIGN, 'utf8'))
  const self = path.resolve(__filename)
  const missing = []
  let count = 0
  const filesCiting = new Set()
  const numbersCited = new Set()
  for (const entry of SCANNED) {
    for (const file of files(entry)) {
      if (file === self) continue
      for (const { line, number } of citations(fs.readFileSync(file, 'utf8'))) {
        count++
        filesCiting.add(file)
        numbersCited.add(number)
        if (!known.has(number)) missing.push(`${path.relative(root, file)}:${line}: docs/design.md has no heading for §${number}`)
      }
    }
  }
  if (missing.length > 0) {
    process.stderr.write(`${missing.join('\n')}\ncheck-design-refs: ${missing.length} of ${count} citations point at no decision in docs/design.md (headings "### N. …")\n`)
    process.exit(1)
  }
  console.log(
    `check-design-refs: ${count} citations of ${numbersCited.size} decisions in ${filesCiting.size} files, each with its heading in docs/design.md`,
  )
}

if (require.main === module) main()
module.exports = { citations, headings }
