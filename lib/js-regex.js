'use strict'
// `ready: { stdout }` patterns are JavaScript regular expressions (docs/api.md), and the core matches lines with
// Rust's `regex_lite`, whose syntax is close to JavaScript's but not the same: some JavaScript forms it refuses
// (`[^]`, `\cJ`, `\0`, `a{,2}`, `[[]`, `\q`), and some it reads another way (`\<` and `\>` are word boundaries
// there, `\z` and `\A` the ends of the text, `.` matches a carriage return, `--` and `&&` in a class are set
// operations). `toCoreRegex` rewrites a JavaScript pattern into forms that both engines read the same way:
// plain characters, `\xHH` and `\uHHHH` escapes, classes of single characters and ranges. What it leaves alone
// (look-around, numbered back-references, `\p{…}` with the u flag) the core refuses with ERR_INVALID_ARG, and
// back-references by name are refused here.
// Still ASCII in the core: `\s` (JavaScript's also has the Unicode spaces) and the i flag's case folding.

const { invalidArg } = require('./format.js')

/** A JavaScript form the core's engine cannot match (readyForCore names the option). */
class NotSupported extends Error {}

const hex = (code) => (code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`)
// The escapes that mean the same in both engines, as they are (outside a class; `\b` and `\B` are assertions).
const SAME_ESCAPES = new Set('bBdDfnrsStvwW')
// In a class `\b` is a backspace in JavaScript; `\B` is the letter.
const SAME_IN_CLASS = new Set('dDfnrsStvwW')

/** The character `c` as the core reads it literally, in or out of a class. */
function literal(c) {
  const code = c.codePointAt(0)
  if (code < 0x20 || code === 0x7f) return hex(code)
  // `<` and `>` escaped are assertions in the core; unescaped they are the characters in both.
  if (/[\\^$.|?*+()[\]{}\-&~#]/.test(c)) return `\\${c}`
  return c
}

/**
 * The escape at `pattern[i]` (a backslash) in JavaScript's meaning: `{ text, next, atom }` where `text` is what
 * the core reads the same way, `next` the index after it and `atom` whether it is one character (it can end a
 * range in a class). `inClass`: inside `[…]`. `unicode`: the u flag. `named`: the pattern has named groups.
 */
function escape(pattern, i, inClass, unicode, named) {
  const c = pattern[i + 1]
  if (c === undefined) return { text: '\\\\', next: i + 1, atom: true }
  if (inClass ? SAME_IN_CLASS.has(c) : SAME_ESCAPES.has(c)) return { text: `\\${c}`, next: i + 2, atom: false }
  if (inClass && c === 'b') return { text: '\\x08', next: i + 2, atom: true }
  if (c === 'c') {
    const letter = pattern[i + 2]
    if (letter && /[A-Za-z]/.test(letter)) return { text: hex(letter.charCodeAt(0) % 32), next: i + 3, atom: true }
    // Annex B: a backslash, then the letter c.
    return { text: '\\\\', next: i + 1, atom: true }
  }
  const two = c === 'x' && /^[0-9a-fA-F]{2}/.exec(pattern.slice(i + 2))
  if (two) return { text: hex(parseInt(two[0], 16)), next: i + 4, atom: true }
  if (c === 'u') {
    const four = /^[0-9a-fA-F]{4}/.exec(pattern.slice(i + 2))
    if (four) {
      const code = parseInt(four[0], 16)
      // A surrogate pair (`\ud83d\ude00`) is one character of the line; the core has no lone surrogates.
      const low = /^\\u([dD][c-fC-F][0-9a-fA-F]{2})/.exec(pattern.slice(i + 6))
      if (code >= 0xd800 && code <= 0xdbff && low) {
        const pair = String.fromCharCode(code, parseInt(low[1], 16))
        return { text: literal(pair), next: i + 12, atom: true }
      }
      return { text: hex(code), next: i + 6, atom: true }
    }
    const braced = unicode && /^\{([0-9a-fA-F]+)\}/.exec(pattern.slice(i + 2))
    if (braced) return { text: `\\u{${braced[1]}}`, next: i + 2 + braced[0].length, atom: true }
  }
  if (/[0-9]/.test(c)) {
    // `\0` not followed by a digit is NUL; other digits are back-references or octal: left to the core.
    if (c === '0' && !/[0-9]/.test(pattern[i + 2] ?? '')) return { text: '\\x00', next: i + 2, atom: true }
    return { text: `\\${c}`, next: i + 2, atom: false }
  }
  // A back-reference by name: not something the core's engine can match.
  if (c === 'k' && named) throw new NotSupported('back-references are not supported')
  // A Unicode property (u flag), whole: left to the core, which refuses it.
  if ((c === 'p' || c === 'P') && unicode) {
    const property = /^\{[^}]*\}/.exec(pattern.slice(i + 2))?.[0] ?? ''
    return { text: `\\${c}${property}`, next: i + 2 + property.length, atom: false }
  }
  // Any other escape is the character itself (`\/`, `\-`, `\q`, `\z`, `\<`).
  const char = String.fromCodePoint(pattern.codePointAt(i + 1))
  return { text: literal(char), next: i + 1 + char.length, atom: true }
}

/** A JavaScript quantifier `{n}`, `{n,}` or `{n,m}` at `i`, or null (then `{` is a character). */
function braces(pattern, i) {
  return /^\{[0-9]+(,[0-9]*)?\}/.exec(pattern.slice(i))?.[0] ?? null
}

/** The member of a class at `j` (an escape or one character): `{ text, next, atom }`, as for `escape`. */
function member(pattern, j, unicode, named) {
  if (pattern[j] === '\\') return escape(pattern, j, true, unicode, named)
  const char = String.fromCodePoint(pattern.codePointAt(j))
  return { text: literal(char), next: j + char.length, atom: true }
}

/** The class `[…]` that starts at `i`: `{ text, next }`. */
function charClass(pattern, i, unicode, named) {
  let j = i + 1
  let text = '['
  if (pattern[j] === '^') {
    text += '^'
    j++
  }
  if (pattern[j] === ']') {
    // `[]` matches nothing, `[^]` any character.
    return { text: text === '[^' ? '[\\s\\S]' : '[^\\s\\S]', next: j + 1 }
  }
  let lastAtom = false
  while (j < pattern.length && pattern[j] !== ']') {
    // `-` between two single characters makes a range; anywhere else it is the character.
    if (pattern[j] === '-' && lastAtom && j + 1 < pattern.length && pattern[j + 1] !== ']') {
      const end = member(pattern, j + 1, unicode, named)
      if (end.atom) {
        text += `-${end.text}`
        j = end.next
        lastAtom = false
        continue
      }
    }
    const part = member(pattern, j, unicode, named)
    text += part.text
    j = part.next
    lastAtom = part.atom
  }
  return { text: `${text}]`, next: j + 1 }
}

/**
 * `source` (a JavaScript pattern that `new RegExp(source, flags)` compiles) as a pattern the core reads with the
 * same meaning; the i and s flags are the caller's to add.
 */
function toCoreRegex(source, flags = '') {
  const unicode = flags.includes('u')
  const dotAll = flags.includes('s')
  const named = /\(\?<[^=!]/.test(source)
  let out = ''
  let i = 0
  while (i < source.length) {
    const c = source[i]
    if (c === '\\') {
      const e = escape(source, i, false, unicode, named)
      out += e.text
      i = e.next
    } else if (c === '[') {
      const k = charClass(source, i, unicode, named)
      out += k.text
      i = k.next
    } else if (c === '{') {
      const q = braces(source, i)
      out += q ?? '\\{'
      i += q ? q.length : 1
    } else if (c === '}' || c === ']') {
      out += `\\${c}`
      i++
    } else if (c === '.' && !dotAll) {
      // JavaScript's `.` stops at every line terminator.
      out += '[^\\n\\r\\u2028\\u2029]'
      i++
    } else {
      const char = String.fromCodePoint(source.codePointAt(i))
      out += char
      i += char.length
    }
  }
  return out
}

/**
 * The `ready` option for the core: `{ ready, shown, quoted }`. `ready: { stdout }` takes JavaScript's regular
 * expressions (docs/api.md): a string that `new RegExp` compiles, or a RegExp (its `i` and `s` flags become
 * inline flags; `d`, `g`, `m`, `u` and `y` change nothing for one line matched once); its pattern goes to the
 * core rewritten by `toCoreRegex`. `shown`: the option as given, for `pm.options` (a RegExp as its literal);
 * `quoted`: the pattern as the app wrote it, for the core's error messages. Other values go as they are.
 */
function readyForCore(ready) {
  const stdout = ready !== null && typeof ready === 'object' && !Array.isArray(ready) ? ready.stdout : undefined
  let source, flags, quoted
  if (stdout instanceof RegExp) {
    const unsupported = [...stdout.flags].filter((f) => !'dgimsuy'.includes(f))
    if (unsupported.length > 0) throw invalidArg(`ready.stdout ${stdout}: the flag ${unsupported.join(', ')} is not supported (d, g, i, m, s, u and y are)`)
    source = stdout.source
    flags = stdout.flags
    quoted = String(stdout)
  } else if (typeof stdout === 'string') {
    try {
      new RegExp(stdout)
    } catch (err) {
      throw invalidArg(`ready.stdout ${JSON.stringify(stdout)} is not a JavaScript regular expression: ${err.message}`)
    }
    source = stdout
    flags = ''
    quoted = JSON.stringify(stdout)
  } else {
    return { ready, shown: null, quoted: null }
  }
  let pattern
  try {
    pattern = toCoreRegex(source, flags)
  } catch (err) {
    if (err instanceof NotSupported) throw invalidArg(`ready.stdout ${quoted} is not a pattern this library can match: ${err.message}`)
    throw err
  }
  const inline = [...flags].filter((f) => f === 'i' || f === 's').join('')
  return { ready: { ...ready, stdout: inline ? `(?${inline})${pattern}` : pattern }, shown: { ...ready, stdout: stdout instanceof RegExp ? quoted : stdout }, quoted }
}

module.exports = { toCoreRegex, readyForCore }
