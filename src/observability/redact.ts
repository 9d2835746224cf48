import { maskQueryValues } from '../core/query-keys.js'
import { hideBeforeAt, userinfoSpan } from '../core/userinfo.js'

// Secret hiding for logs and messages. Two nets: field names that hold secrets (their values
// are replaced whole), and secrets embedded in free text (URL credentials, `password=` pairs,
// `x-api-key: ...` header lines and `{ password: '...' }` object text, bearer tokens), which
// are masked wherever a string is logged.

/** What a redacted value is replaced with. */
export const REDACTED = '[redacted]'

// Compared after lower-casing and removing `-`, `_`, `.` and spaces, so `X-Api-Key`,
// `api_key` and `apiKey` are one name. A suffix match catches `dbPassword`, `clientSecret`,
// `accessToken`, `set-cookie`, `proxy-authorization`; names that merely contain a word
// (`tokens`, `secretFile`, `passwordPolicy`) are left alone. The secret half of a key pair is
// named secret-then-key (AWS's secretAccessKey, S3 clients' secretKey, Django's SECRET_KEY):
// a `secret` suffix alone left it written, beside a masked sessionToken. A collection of secrets
// is one too (Express's req.cookies holds session ids under names such as `sid`, which no
// suffix marks), except `tokens`: that is a count (an LLM's max_tokens) as often as not.
const secretSuffixes = [
  'password',
  'passwords',
  'passwd',
  'passphrase',
  'secret',
  'secrets',
  'secretkey',
  'secretaccesskey',
  'token',
  'apikey',
  'apikeys',
  'privatekey',
  'privatekeys',
  'credential',
  'credentials',
  'authorization',
  'cookie',
  'cookies',
  'sessionid',
]

/** The normalized form of a field name that {@link isSecretKey} compares. */
export function normalizeKey(key: string): string {
  return key.toLowerCase().replace(/[-_.\s]/g, '')
}

/**
 * True when a field of this name holds a secret (password, secret, secret key as in
 * `secretAccessKey`, token, API key, private key, credentials, authorization, cookie, session
 * id, in any case and with `-`/`_` spelling; `cookies`, `secrets`, `passwords`, `apiKeys` and
 * `privateKeys` too, but not `tokens`, which is as often a count), or when its normalized name
 * is one of `extra`.
 *
 * @example
 * ```ts
 * isSecretKey('X-Api-Key') // true
 * isSecretKey('tokens') // false
 * ```
 */
export function isSecretKey(key: string, extra?: ReadonlySet<string>): boolean {
  const normalized = normalizeKey(key)
  if (extra?.has(normalized)) return true
  for (const suffix of secretSuffixes) if (normalized.endsWith(suffix)) return true
  return false
}

// A URL-like run of text: scheme:// and everything up to whitespace, a quote, an angle bracket
// or a backtick (none of which a URL holds unencoded). Its userinfo is found by userinfoSpan, as
// in database and broker URLs, so a password holding an unencoded `@`, `/`, `?` or `#` is masked
// whole. A password that was not percent-encoded may also hold a character that ends the run
// (`postgres://app:my secret@db`, `postgres://app:pa"ss@db`): see maskUrlCredentials.
// Every pattern here must run in time linear in the text: redactSecrets sees every logged
// string, request paths in access lines included. An unbounded run of name characters after a
// `\b` is quadratic (each word boundary inside `a.a.a.a...` restarts a scan to the run's end:
// 0.6 s for a 16 KB path), so the scheme is bounded (none is longer than 32 characters).
const urlRuns = /\b[a-z][a-z0-9+.-]{0,31}:\/\/[^\s"'<>`]*/gi
// A run that ends inside a password: `scheme://user:` and something after the colon that is
// not a port (`host:8080`, `host:8080/path`, `[::1]:80` are hosts, not users).
const openPassword = /^[a-z][a-z0-9+.-]*:\/\/[^\s:/?#@[\]]*:(?!\d*(?:[/?#]|$))/i
// A run that ends in what reads as a port (and maybe a path), `scheme://name:8080`: the start
// of a password only when a quote, an angle bracket or a backtick stops it and an `@` follows
// with no blank nor another such character between (`postgres://app:12"34@db`);
// `"http://host:8080" by ann@example.com` and the JSON `{"u":"http://h:80","by":"a@b"}` stay a
// host and port.
const portOrPassword = /^[a-z][a-z0-9+.-]*:\/\/[^\s:/?#@[\]]*:\d*(?:[/?#][^@]*)?$/i
// What ends the search for the `@` after an open password: the `@`, or the end of the line, or
// the next URL (a password holds no `://`). After a port-like run, a blank ends it too. A line
// break right before the `@` is the password's: one read from a file (a Docker or Kubernetes
// secret) keeps the file's last line break when a URL is built around it.
const userinfoEnd = /@|\r\n(?!@)|\r(?![\n@])|\n(?!@)|:\/\//g
const userinfoEndNoBlank = /@|[\s"'<>`]|:\/\//g
// The rest of a URL after its userinfo's `@`, as urlRuns reads it.
const afterAt = /[^\s"'<>`]*/y
// A run that a line break stopped inside its authority (`scheme://user:pw`, `scheme://token`),
// and the line break then `@` that make it userinfo (see userinfoEnd).
const openAuthority = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@]*$/i
const lineBreakThenAt = /(?:\r\n?|\n)@/y
// key=value pairs in query strings, libpq/ODBC connection strings and environment dumps. The
// key is judged as a field name is: one that ends in a secret name (`DB_PASSWORD`, `PGPASSWORD`,
// `client_secret`, `x-api-key`), not one that merely contains it (`max_tokens`). The match
// starts at the secret name (what comes before it in the key is kept as it is anyway), which
// keeps it linear.
// Blanks and the word after them continue a value, unless the word starts the next pair
// (`name=`). Each blank run is tried once, so this stays linear. A query parameter (its key
// follows `?` or `&`) ends at a blank: a URL holds none unencoded, so what follows is the rest
// of the line (an access line's status and duration); a colon just before that blank (or the
// end of the text) is the message's, not the value's (`cannot open <url>: connect ...`). The
// look back covers the key alone, and runs only where a secret name and `=` matched; it takes a
// percent-encoded key too (`?access%5Ftoken=`), so that it masks the value as maskQueryValues
// does.
const secretNames =
  'password|passwd|passphrase|pwd|secret(?:[_-]?(?:access[_-]?)?key)?|token|api[_-]?key|private[_-]?key|credentials?|session[_-]?id'
const secretPairs = new RegExp(
  String.raw`(${secretNames})=(?:"[^"]*"|'[^']*'|(?<=[?&][\w.%-]*=)(?:[^\s&#:]|:(?!\s|$))*|[^\s&#;,]*(?:[^\S\n]+(?![\w.-]+=)[^\s&#;,]+)*)`,
  'gi',
)
// A query key is judged as secretPairs judges a key, once percent-decoded as a URL reader
// decodes it (`?pass%77ord=x` sets a password, as `?password=x` does); its value ends as a
// query parameter's does there.
const secretQueryKey = new RegExp(`(?:${secretNames})$`, 'i')
const isSecretQueryKey = (name: string): boolean => secretQueryKey.test(name)
const queryValueEnd = /[\s&#]|:(?=\s|$)/g
const authSchemes = /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/g
// After an Authorization header name, any scheme in any case (schemes are case-insensitive,
// RFC 9110 §11.1: `authorization: bearer ...`, `Token ...`); elsewhere only `Bearer`/`Basic`,
// since "basic" and "bearer" are also plain words. The credentials run to the closing quote of
// a quoted value, else to the end of the line or the next `name: ` header on it: a credential
// may hold blanks (`Bearer abc def`, a Digest parameter list).
const authHeaders =
  /\b((?:proxy-)?authorization["']?\s*[:=]\s*)(?:"([A-Za-z][\w.+-]*)\s+[A-Za-z0-9._~+/=-](?:[^"\\\n]|\\.)*("?)|'([A-Za-z][\w.+-]*)\s+[A-Za-z0-9._~+/=-][^'\n]*('?)|([A-Za-z][\w.+-]*)\s+[A-Za-z0-9._~+/=-]\S*(?:[^\S\n]+(?![\w-]+:\s)\S+)*)/gi
// `"name": value` members of JSON held in a string (a request body or config quoted in an error
// message): a string or number value of a secret-named member is masked, the name judged by
// isSecretKey as a field name is.
const jsonMembers = /"((?:[^"\\]|\\.){1,200})"(\s*:\s*)("(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*)/g
// A `name:` as a header line, util.inspect output or a template string writes it, the name
// optionally quoted (`'x-api-key':`, `"password":`, `\"token\":` in JSON quoted in a string),
// or a `name =` / `name =>` of an INI, TOML or .env dump or a Ruby or PHP hash (`==` is a
// comparison, not a value).
// The look behind lets a match start only where a run of name characters starts, so a long run
// (`a.a.a...`) is read from its start alone, not once from each of its characters; it also
// leaves out the last segment of a file path (`/etc/app/token: no such file`). The value is
// found by maskNamedValues, and only after a secret name: a value of any other name is never
// read as a whole, so a secret inside it (`message: "login password: x"`) is still found.
const namedColon =
  /(?<![\w.$/\\-])(?:\\?["'])?([A-Za-z_$][\w.$-]*)(?:\\?["'])?[^\S\n]*(?::|=>?(?!=))/g
// Text with none of these (nor `@` or `=`) holds nothing the passes mask, and is returned as it
// is: most logged strings (paths, URLs, times), which the passes would cost 25 times as much.
// A `name:` value needs a secret's name, and each name isSecretKey knows holds one of the
// words (`pass` for password, passwd and passphrase, `key` for API and private keys). An
// ellipsis may end a URL cut short inside its password (see maskUrlCredentials).
const mayHoldSecret =
  /bearer|basic|authorization|pass|secret|token|key|credential|cookie|session|"\s*:|…/i

/**
 * Masks secrets embedded in text: URL credentials (`postgres://app:secret@db` becomes
 * `postgres://app:***@db`; a user-only userinfo such as a NATS token becomes `***`; written
 * without `//`, `nats:user:pw@host` becomes `nats:***@host`, see maskSlashlessUserinfo),
 * `key=value` pairs whose key ends in a secret name (`password=`, `DB_PASSWORD=`, `token=`,
 * `x-api-key=`, as {@link isSecretKey} judges field names; a query key once percent-decoded,
 * `?pass%77ord=`), the values of secret-named members
 * of JSON text (`"password":"..."`), `Bearer`/`Basic` credentials, the credentials after
 * an `Authorization` header name whatever their scheme and case, and the value after every
 * secret-named `name:` (or `name = `, `name =>`) that starts a header line, a config line or
 * an object member (`x-api-key: abc`, `cookie: a=b; c=d`, `login failed, password: x`,
 * util.inspect's `{ password: 'x' }`, `password = "x"` in a TOML dump; names
 * judged by {@link isSecretKey}, the names themselves kept). A name that follows a word is
 * prose (`needs a signing secret: set ...`), and a `name: expected ...` is an option check's
 * message: both are left alone.
 *
 * A secret may hold blanks, so a value is not over at the first one: an unquoted `key=value`
 * value runs to the next `name=` pair, a `&`, `#`, `;` or `,`, or the end of the line
 * (`password=my secret pass dbname=app` keeps only `dbname=app`); Authorization credentials run
 * to the closing quote of a quoted value, else to the next `name: ` header or the end of the
 * line; a `name: value` value runs to its closing quote, else to the end of the line or the
 * next `name: ` on it, less closing punctuation (`{ token: abc, n: 1 }` keeps `, n: 1 }`);
 * a value that is an object or array (`{ password: { value: 'x' } }`, `{"token":["a"]}`,
 * util.inspect's `Secret { ... }` over several lines) is masked whole, to its closing bracket
 * (brackets in quoted strings not counted), or to the end of the text when it never closes;
 * a URL password runs to the first `@` on its line, whatever it holds before it (blanks,
 * quotes, angle brackets, backticks: `postgres://app:my pass@db`, `postgres://app:pa"ss@db`),
 * or to an `@` right after the line break that ends its line (`postgres://app:pw\n@db`, a
 * password read from a file with its last line break, in a message of several lines),
 * or to the ellipsis of a URL cut short before its `@` (`redis://app:p4ss…`); one that starts
 * like a port (`postgres://app:12"34@db`) runs to an `@` only with no blank nor second quote on
 * the way, as `"http://host:8080" by ann@example.com` is a host and port. The search for that
 * `@` ends at the next `://`, where the next URL's own search begins (which keeps the scan
 * linear), so a password holding an unencoded `://` is not found: no valid URL has one, as
 * `/` must be percent-encoded in userinfo (RFC 3986). Text
 * that follows a secret on its line may therefore be masked with it: hiding too much is the
 * safe side.
 *
 * @example
 * ```ts
 * redactSecrets('cannot connect to amqp://guest:guest@127.0.0.1:5672')
 * // 'cannot connect to amqp://guest:***@127.0.0.1:5672'
 * ```
 */
export function redactSecrets(text: string): string {
  if (!text.includes('@') && !text.includes('=') && !mayHoldSecret.test(text)) return text
  const masked = maskQueryValues(
    maskSlashlessUserinfo(maskUrlCredentials(text)),
    isSecretQueryKey,
    queryValueEnd,
  )
    .replace(jsonMembers, (match, key: string, colon: string) =>
      isSecretKey(key) ? `"${key}"${colon}"***"` : match,
    )
    .replace(secretPairs, (_match, name: string) => `${name}=***`)
    .replace(
      authHeaders,
      (
        _match,
        name: string,
        doubleQuoted?: string,
        doubleClose?: string,
        singleQuoted?: string,
        singleClose?: string,
        bare?: string,
      ) => {
        if (doubleQuoted !== undefined) return `${name}"${doubleQuoted} ***${doubleClose}`
        if (singleQuoted !== undefined) return `${name}'${singleQuoted} ***${singleClose}`
        return `${name}${bare} ***`
      },
    )
    .replace(authSchemes, (_match, scheme: string) => `${scheme} ***`)
  return maskNamedValues(masked)
}

// A value the passes before maskNamedValues masked already: `***`, or `Bearer ***` (the scheme
// of Authorization credentials is kept).
const alreadyMasked = /^(?:[A-Za-z][\w.+-]*[^\S\n]+)?\*\*\*$/
// What may follow a value in an object or a quotation (`{ token: abc, n: 1 }`,
// `"token: abc"`): kept after the mask, with the blanks before it.
const closers = new Set([',', ';', ')', '}', ']', '"', "'"])

/**
 * Masks the value after every `name:` whose name is a secret's, as {@link isSecretKey} judges a
 * field name (`x-api-key: abc`, `cookie: a=b; c=d`, `{ password: 'x' }`), keeping the name: a
 * quoted value to its closing quote (or the end of the line), an unquoted one to the end of the
 * line or the next `name: ` on it, less the closing punctuation that ends it (`,`, `}`, ...),
 * and an object or array in it to its closing bracket, over lines and names.
 * Values the other passes of {@link redactSecrets} masked are left as they are. `onScan` is
 * told how many characters each value search read; tests use it to check the work stays
 * linear: no search reads past the value it finds, plus the next `name:` that ends it.
 *
 * @internal Use {@link redactSecrets}.
 */
export function maskNamedValues(text: string, onScan?: (chars: number) => void): string {
  let out = ''
  let copied = 0
  namedColon.lastIndex = 0
  for (let match = namedColon.exec(text); match !== null; match = namedColon.exec(text)) {
    if (!isSecretKey(match[1] as string) || !startsField(text, match.index)) continue
    // `password=x` without blanks is secretPairs' (which ends a value at the next `name=`).
    const at = namedColon.lastIndex
    if (text[at - 1] === '=' && !isBlank(text[at - 2]) && !isBlank(text[at])) continue
    const value = valueAfter(text, at)
    onScan?.(value.read)
    if (value.end === value.start) continue
    // Go on after the value: a `name:` inside it is masked with it.
    namedColon.lastIndex = value.end
    const shown = text.slice(value.start, value.end)
    if (shown.endsWith('***') && alreadyMasked.test(shown)) continue
    out += `${text.slice(copied, value.start)}***`
    copied = value.end
  }
  return copied === 0 ? text : out + text.slice(copied)
}

// Where a header or an object member starts: the start of a line, or after `{`, `[`, `(`, `,`,
// `;` or a `:` (`error: password: x`), blanks between. A name that follows a word is prose
// ("needs a signing secret: set BREAKWATER_WEBHOOK_SECRET"), not a field. Reads back over the
// blanks before one name only, so each blank is read once.
function startsField(text: string, at: number): boolean {
  let i = at
  while (isBlank(text[i - 1])) i--
  return i === 0 || fieldOpeners.has(text[i - 1] as string)
}

const fieldOpeners = new Set(['\n', '\r', '{', '[', '(', ',', ';', ':'])

interface ValueSpan {
  readonly start: number
  readonly end: number
  /** How many characters finding it read. */
  readonly read: number
}

const optionCheck = 'expected '
const afterBracket = new Set([',', '}', ']', ')'])
const isBlank = (c: string | undefined): boolean => c === ' ' || c === '\t'
const isSpace = (c: string | undefined): boolean => c !== undefined && /\s/.test(c)
const isNameChar = (c: string | undefined): boolean => c !== undefined && /[\w.$-]/.test(c)
const isQuote = (c: string | undefined): boolean => c === '"' || c === "'"

// The value that starts after the blanks at `from`: the inside of a quoted value (a quote
// escaped with `\`, as in JSON quoted in a string, delimits too), else the words up to the end
// of the line or the next `name: `, less closing punctuation.
function valueAfter(text: string, from: number): ValueSpan {
  let i = from
  while (isBlank(text[i])) i++
  const escaped = text[i] === '\\' && isQuote(text[i + 1]) ? 1 : 0
  const quote = text[i + escaped]
  if (isQuote(quote)) {
    const start = i + escaped + 1
    let j = start
    while (j < text.length && text[j] !== '\n') {
      if (escaped === 1 ? text[j] === '\\' && text[j + 1] === quote : text[j] === quote) break
      j += escaped === 0 && text[j] === '\\' && text[j + 1] !== '\n' ? 2 : 1
    }
    const end = Math.min(j, text.length)
    return { start, end, read: end - from }
  }
  let read = i - from
  // `admin.token: expected { env: NAME }, got ...`: an option check names the option, then
  // says what it expected (InvalidOptionError, the CLI's and the proxy's config errors).
  if (text.startsWith(optionCheck, i)) return { start: i, end: i, read: read + optionCheck.length }
  let end = i
  let j = i
  // Where the last object or array in the value closed: closing punctuation before it is the
  // value's own (`{"password":{"v":"x"}}` keeps only the last brace).
  let bracketEnd = i
  for (;;) {
    const wordStart = j
    let closed = false
    while (j < text.length && !isSpace(text[j])) {
      if (text[j] === '{' || text[j] === '[') {
        // An object or array (`{ password: { value: 'x' } }`, util.inspect's
        // `Secret { value: 'x' }`) is the value whole, over blanks, names and lines: the names
        // inside it are not secret names, so stopping at them left the secret written. A `,`
        // or closing bracket right after it ends the value (`{"token":["a"],"n":1}`).
        j = bracketEnd = closingBracket(text, j)
        closed = afterBracket.has(text[j] as string)
        if (closed) break
      } else j++
    }
    read += j - wordStart
    end = j
    if (closed) break
    let k = j
    while (isBlank(text[k])) k++
    read += k - j
    if (k === j || k >= text.length || isSpace(text[k])) break
    const name = nameAt(text, k)
    read += name.read
    if (name.found) break
    j = k
  }
  // `{ token: abc }`: the brace and the blank before it are not the secret's.
  let trimmed = end
  while (trimmed > bracketEnd && closers.has(text[trimmed - 1] as string)) trimmed--
  if (trimmed < end) while (trimmed > bracketEnd && isBlank(text[trimmed - 1])) trimmed--
  read += end - trimmed
  return { start: i, end: trimmed, read }
}

// Where the object or array that opens at `open` (a `{` or `[`) ends: just past the bracket
// that closes it, or the end of the text when none does (a value cut short: hiding too much is
// the safe side). Brackets inside quoted strings ('...', "...", `...`, and \"...\" of JSON
// quoted in a string) do not count; a string also ends at the end of its line, so a stray
// apostrophe does not swallow the lines after it. Any closing bracket closes any opening one:
// a count, not a stack, as what is read is text, not checked syntax. Each character is read
// once, so the callers stay linear (no regular expression could match nested brackets without
// backtracking).
function closingBracket(text: string, open: number): number {
  let depth = 0
  let k = open
  while (k < text.length) {
    const c = text[k]
    if (c === '{' || c === '[') depth++
    else if (c === '}' || c === ']') {
      if (--depth === 0) return k + 1
    } else if (isQuote(c) || c === '`') {
      k = stringEnd(text, k + 1, c as string, false)
      continue
    } else if (c === '\\' && isQuote(text[k + 1])) {
      k = stringEnd(text, k + 2, text[k + 1] as string, true)
      continue
    } else if (c === '\\') k++
    k++
  }
  return text.length
}

// Just past the quote that ends a string whose text starts at `from`, or the line break (or end
// of text) that comes first. `escaped`: the string is quoted as `\"...\"` (JSON held in a
// string), where `\\` is one backslash of the inner text, which escapes the character after it.
function stringEnd(text: string, from: number, quote: string, escaped: boolean): number {
  let k = from
  while (k < text.length && text[k] !== '\n') {
    const c = text[k]
    if (!escaped) {
      if (c === quote) return k + 1
      k += c === '\\' && text[k + 1] !== '\n' ? 2 : 1
    } else if (c === '\\' && text[k + 1] === quote) {
      return k + 2
    } else if (c === '\\' && text[k + 1] === '\\') {
      // An escape of the inner text: the backslash, then the character it escapes (itself
      // written `\\` or `\"` when it is a backslash or a quote).
      k += 2
      k += text[k] === '\\' && text[k + 1] !== '\n' ? 2 : 1
    } else k += c === '\\' && text[k + 1] !== '\n' ? 2 : 1
  }
  return k
}

// Whether a `name:` followed by a blank, or the end of the text or line, starts at `k`.
function nameAt(text: string, k: number): { found: boolean; read: number } {
  let j = k
  if (text[j] === '\\' && isQuote(text[j + 1])) j += 2
  else if (isQuote(text[j])) j++
  const nameStart = j
  while (isNameChar(text[j])) j++
  if (j === nameStart) return { found: false, read: j - k + 1 }
  if (text[j] === '\\' && isQuote(text[j + 1])) j += 2
  else if (isQuote(text[j])) j++
  const found = text[j] === ':' && (j + 1 >= text.length || isSpace(text[j + 1]))
  return { found, read: j - k + 2 }
}

/**
 * Masks the userinfo of every URL in `text` (see {@link redactSecrets}), including a password
 * that holds a character that ends a URL-like run (a blank, a quote, an angle bracket, a
 * backtick): a run that stops inside `scheme://user:...` goes on to the first `@` on the same
 * line, unless another `scheme://` comes first; with no such `@`, to an ellipsis on the way (a
 * URL cut short). A run that ends in what reads as a port (`scheme://host:8080`) goes on only
 * when a quote, angle bracket or backtick stopped it and an `@` follows with no blank nor
 * another of those between (`postgres://app:12"34@db`). `onScan` is told how many characters each such search read; tests use it to check
 * that no character is read twice, whatever the text: a search ends at the latest at the next
 * URL's `://`, where the next search can begin only after that URL's run.
 *
 * @internal Use {@link redactSecrets}.
 */
export function maskUrlCredentials(text: string, onScan?: (chars: number) => void): string {
  let out = ''
  let copied = 0
  urlRuns.lastIndex = 0
  for (let match = urlRuns.exec(text); match !== null; match = urlRuns.exec(text)) {
    const start = match.index
    let run = match[0]
    const runEnd = start + run.length
    const search = passwordSearch(run, text[runEnd])
    lineBreakThenAt.lastIndex = runEnd
    if (search === undefined && openAuthority.test(run) && lineBreakThenAt.test(text)) {
      // Userinfo ending in a line break (a password read from a file with its last one).
      afterAt.lastIndex = lineBreakThenAt.lastIndex
      run = text.slice(start, lineBreakThenAt.lastIndex) + (afterAt.exec(text)?.[0] ?? '')
      urlRuns.lastIndex = start + run.length
    } else if (search !== undefined) {
      // Past the character that stopped the run (the search after a port may stop at it).
      search.lastIndex = runEnd + 1
      const end = search.exec(text)
      const stop = end === null ? text.length : end.index
      onScan?.(stop - runEnd - 1)
      if (end !== null && end[0] === '@') {
        afterAt.lastIndex = stop + 1
        run = text.slice(start, stop + 1) + (afterAt.exec(text)?.[0] ?? '')
      } else {
        // A URL cut short before its `@` (describeValue quotes it, so a `"` in the password
        // arrives as `\"` and ends the run): the password runs to the ellipsis.
        const cut = text.slice(runEnd, stop).lastIndexOf('…')
        if (cut !== -1) run = text.slice(start, runEnd + cut + 1)
      }
      urlRuns.lastIndex = start + run.length
    }
    out += text.slice(copied, start) + (cutInPassword(run) ?? maskUserinfo(run))
    copied = start + run.length
  }
  return copied === 0 ? text : out + text.slice(copied)
}

// A run of text no URL ends inside (see urlRuns), and where a scheme may begin in one: at its
// start or after a character no scheme holds.
const textRuns = /[^\s"'<>`]+/g
const schemeStart = /(?:^|[^a-z0-9+.-])([a-z][a-z0-9+.-]*):/gi

/**
 * Masks the userinfo of URLs written without `//` (`nats:user:pw@host`, `redis:/:pw@host`),
 * which {@link maskUrlCredentials} does not see: everything between the scheme (and a single
 * slash) and the `@` becomes `***`, by {@link hideBeforeAt}, as the broker and database
 * refusals hide it (`nats:***@host`). Such a URL parses with no host and its credentials in the
 * path, so it came through in log lines and CLI output whole. Only a run whose hidden part holds
 * no `/` or `\` is taken, so paths (`file:/app/pkg@1.2.3`, `C:\app\pkg@1.2.3`) and `//` URLs
 * (the pass before) are left alone, and so is `mailto:`, whose `@` is an address's. Each run of text is read a fixed
 * number of times: linear in the length of `text`.
 *
 * @internal Use {@link redactSecrets}.
 */
export function maskSlashlessUserinfo(text: string): string {
  if (!text.includes('@')) return text
  return text.replace(textRuns, (run) => {
    const firstAt = run.indexOf('@')
    if (firstAt === -1) return run
    // The `@` hideBeforeAt ends the userinfo at: the last before the query or fragment.
    const query = run.slice(firstAt).search(/[?#]/)
    const at = run.lastIndexOf('@', query === -1 ? run.length : firstAt + query)
    // Backslashes too: a Windows path (C:\app\pkg@1.2.3) is no userinfo either.
    const lastSlash = Math.max(run.lastIndexOf('/', at), run.lastIndexOf('\\', at))
    schemeStart.lastIndex = 0
    for (let match = schemeStart.exec(run); match !== null; match = schemeStart.exec(run)) {
      const colon = match.index + match[0].length - 1
      if (colon >= at) return run
      // The userinfo begins after the colon, or after one slash (redis:/:pw@host), and holds
      // no slash: a // URL, or a path, is none of this. A one-letter scheme is a drive's.
      const begin = run[colon + 1] === '/' && run[colon + 2] !== '/' ? colon + 2 : colon + 1
      if (begin <= lastSlash) continue
      const scheme = match[1] as string
      if (begin === at || scheme.length < 2 || scheme.toLowerCase() === 'mailto') return run
      const from = colon - scheme.length
      return run.slice(0, from) + hideBeforeAt(run.slice(from))
    }
    return run
  })
}

// How to look for the `@` that ends a password the run stopped inside, at `stop` (the
// character after the run): undefined when the run holds no password cut short by it.
function passwordSearch(run: string, stop: string | undefined): RegExp | undefined {
  if (stop === undefined || stop === '\n' || stop === '\r' || run.includes('@')) return undefined
  if (openPassword.test(run)) return userinfoEnd
  if (/\s/.test(stop) || !portOrPassword.test(run)) return undefined
  // `scheme://user:"...`: an empty port is no host's, so the password may hold blanks too.
  return run.endsWith(':') ? userinfoEnd : userinfoEndNoBlank
}

// A URL cut short before its `@` (describeValue cuts a string at 60 characters, and marks
// the cut with an ellipsis) still shows the start of its password: what follows `user:` is
// masked when the run ends in the ellipsis and that is not a port. Undefined otherwise.
function cutInPassword(run: string): string | undefined {
  if (!run.endsWith('…') || run.includes('@') || !openPassword.test(run)) return undefined
  return `${run.slice(0, run.indexOf(':', run.indexOf('//') + 2) + 1)}***…`
}

// user:password@ keeps the user; a user name alone (a NATS or Redis token) is masked whole,
// unless it holds a `/`, `?` or `#`: then the `@` belongs to a path or a query
// (`https://host/users/@me`, `https://host?mail=a@b`).
function maskUserinfo(run: string): string {
  const span = userinfoSpan(run)
  if (span === undefined) return run
  if (span.colon !== -1) return `${run.slice(0, span.colon)}:***${run.slice(span.at)}`
  if (/[/?#]/.test(run.slice(span.start, span.at))) return run
  return `${run.slice(0, span.start)}***${run.slice(span.at)}`
}
