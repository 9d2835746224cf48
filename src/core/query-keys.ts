// Query parameters judged by their key as a URL reader decodes it. pg-connection-string (through
// URLSearchParams), ioredis and any WHATWG URL reader percent-decode a key, and the URL parser
// drops raw tabs and line breaks anywhere in a URL, so `?pass%77ord=x` and `?pass<TAB>word=x`
// set a password as `?password=x` does. Redaction and checks that looked for the literal
// `password=` let them through: shared by the database, broker and log redaction and the
// proxy's config check, so all of them read a key alike.

// A key, from the `?` or `&` before it to its `=`. It holds no `?`, so that in `?a?password=x`
// the second `?` starts a key of its own (a reader takes the key `a?password`, but hiding too
// much is the safe side), and no space: free text ends a URL at one, and pg encodes a raw one
// (`%20`), which no name compared here holds. Keys never overlap, so a scan reads each once.
const queryKeys = /[?&]([^ ?&#=]*)=/g
const dropped = /[\t\n\r]/g
// Only escapes of ASCII characters are decoded: the names compared with keys are ASCII, and a
// lone byte of a multi-byte character must not throw, as decodeURIComponent would.
const asciiEscapes = /%([0-7][0-9a-f])/gi

/**
 * A query key as a URL reader takes it: raw tabs and line breaks dropped, `+` a blank, each
 * `%XX` escape of an ASCII character that character (`pass%77ord` is `password`). Other
 * escapes are kept as written.
 */
export function decodeQueryKey(key: string): string {
  return key
    .replace(dropped, '')
    .replaceAll('+', ' ')
    .replace(asciiEscapes, (_escape, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)))
}

// How many rounds of decoding masking applies to a key. A reader decodes once, so
// `pass%2577ord` sets the parameter `pass%77ord`, no password, and hasQueryKey says so; but a
// key encoded twice is what a layer that encodes an already encoded URL (a template, a URL
// passed in another's query) writes for `password`, and its value is as secret. Masking, where
// hiding too much is the safe side, decodes until the key no longer changes, at most this many
// rounds, and hides the value when any round's form is secret or the key still changes after
// the last round (`%25` nested deeper than that is no accident, and is hidden whatever it
// names). Each round is linear, so a long run of `%2525…` in logged text costs at most this
// many passes, not one per level of nesting.
const maskDecodeRounds = 4

/** Whether a key, decoded up to {@link maskDecodeRounds} times, may name a secret. */
function maskedKey(key: string, isSecret: (name: string) => boolean): boolean {
  let current = key
  for (let round = 0; round < maskDecodeRounds; round++) {
    const decoded = decodeQueryKey(current)
    if (isSecret(decoded)) return true
    if (decoded === current) return false
    current = decoded
  }
  return decodeQueryKey(current) !== current
}

/**
 * Whether a query parameter of `text` (a URL, or free text holding one) has a key that
 * `isSecret` accepts once decoded by {@link decodeQueryKey}.
 */
export function hasQueryKey(text: string, isSecret: (name: string) => boolean): boolean {
  queryKeys.lastIndex = 0
  for (let key = queryKeys.exec(text); key !== null; key = queryKeys.exec(text)) {
    if (isSecret(decodeQueryKey(key[1] as string))) return true
  }
  return false
}

/**
 * Replaces with `***` the value of each query parameter of `text` whose key, decoded by
 * {@link decodeQueryKey} once or more (`pass%2577ord` too, see maskDecodeRounds), `isSecret`
 * accepts; the key is kept as written. A value ends where
 * `valueEnd` (a global pattern) first matches after its `=`, or at the end of `text`. The
 * value of any other key is read on, so a `?password=` inside it is still found. Linear in the
 * length of `text`.
 *
 * @example
 * ```ts
 * maskQueryValues('postgres://db/app?pass%77ord=x&ssl=1', (name) => name === 'password', /[&#]/g)
 * // 'postgres://db/app?pass%77ord=***&ssl=1'
 * ```
 */
export function maskQueryValues(
  text: string,
  isSecret: (name: string) => boolean,
  valueEnd: RegExp,
): string {
  let out = ''
  let copied = 0
  let masked = false
  queryKeys.lastIndex = 0
  for (let key = queryKeys.exec(text); key !== null; key = queryKeys.exec(text)) {
    if (!maskedKey(key[1] as string, isSecret)) continue
    const start = queryKeys.lastIndex
    valueEnd.lastIndex = start
    const end = valueEnd.exec(text)?.index ?? text.length
    out += `${text.slice(copied, start)}***`
    copied = end
    masked = true
    queryKeys.lastIndex = end
  }
  return masked ? out + text.slice(copied) : text
}
