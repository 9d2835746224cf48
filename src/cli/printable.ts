// Stored text printed on an operator's terminal (ids, names, error messages read back from the
// database) may hold anything that was accepted when it was written: an escape sequence
// (\u001b[2J clears the screen, \u001b]0;... retitles the window) would act on the terminal, and a
// line break would make its rest read as rows or fields of their own.

const named: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * The text with every control character (C0, DEL and C1) and line or paragraph separator shown
 * escaped (`\n`, `\r`, `\t`, `\u001b`), so it prints on one line and acts on nothing.
 */
export function printable(text: string): string {
  return text.replace(
    /[\p{Cc}\u2028\u2029]/gu,
    (c) => named[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  )
}
