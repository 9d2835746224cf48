// How line-oriented readers cut text: Python's str.splitlines() ends a line at each of these,
// and so do log shippers that split on Unicode line breaks.

/** The characters Python's str.splitlines() ends a line at (`\r\n` counts as one end). */
const lineEnds = new Set([
  '\n',
  '\r',
  '\v',
  '\f',
  '\u001c',
  '\u001d',
  '\u001e',
  '\u0085',
  '\u2028',
  '\u2029',
])

/** `text` cut into lines as Python's `text.splitlines()` cuts it. */
export function splitLines(text: string): string[] {
  const lines: string[] = []
  let start = 0
  for (let i = 0; i < text.length; i++) {
    if (!lineEnds.has(text[i]!)) continue
    lines.push(text.slice(start, i))
    if (text[i] === '\r' && text[i + 1] === '\n') i++
    start = i + 1
  }
  if (start < text.length) lines.push(text.slice(start))
  return lines
}
