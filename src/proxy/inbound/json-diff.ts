// Response comparison for shadow mode: status, headers and body of the primary's response
// against the shadow's. JSON bodies are compared field by field with JSON-pointer paths
// (`/items/0/id`), so the differences can be filtered (configured ignores, learned noise) and
// shown; other bodies are compared whole.

import { isSecretKey, REDACTED } from '../../observability/redact.js'
import type { CapturedResponse } from '../contracts.js'

/** One difference between two responses. */
export interface Difference {
  /**
   * Where: `status`, `header <name>`, `body` (a non-JSON body), or a JSON pointer into the body
   * (`/items/0/id`; `` for the whole document).
   */
  readonly path: string
  /** The primary's value there; undefined when the primary has nothing there. */
  readonly primary: unknown
  /** The shadow's value there; undefined when the shadow has nothing there. */
  readonly shadow: unknown
}

/**
 * A compiled list of JSON-pointer patterns; `*` stands for any one segment
 * (`/items/ * /id` without the spaces). A pattern also covers everything below the node it
 * names.
 */
export interface PathPatterns {
  /** True when the path (as segments) is named by a pattern. */
  matches(segments: readonly string[]): boolean
  /** True when there are no patterns. */
  readonly empty: boolean
}

/** Splits a JSON pointer into unescaped segments (`/a~1b/c` → `['a/b', 'c']`). */
export function pointerSegments(pointer: string): string[] {
  if (pointer === '' || pointer === '/') return pointer === '' ? [] : ['']
  const body = pointer.startsWith('/') ? pointer.slice(1) : pointer
  return body.split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
}

/** Joins segments into a JSON pointer, escaping `~` and `/`. */
export function toPointer(segments: readonly string[]): string {
  let out = ''
  for (const s of segments) out += `/${s.replace(/~/g, '~0').replace(/\//g, '~1')}`
  return out
}

/** Compiles JSON-pointer patterns with `*` segment wildcards. */
export function compilePathPatterns(patterns: readonly string[]): PathPatterns {
  const compiled = patterns.map(pointerSegments)
  return {
    empty: compiled.length === 0,
    matches(segments) {
      outer: for (const pattern of compiled) {
        if (pattern.length !== segments.length) continue
        for (let i = 0; i < pattern.length; i++) {
          const p = pattern[i] as string
          if (p !== '*' && p !== segments[i]) continue outer
        }
        return true
      }
      return false
    },
  }
}

/** Options of {@link diffJson}. */
export interface DiffJsonOptions {
  /**
   * Subtrees left out of the comparison.
   * @default no patterns
   */
  readonly ignore?: PathPatterns | undefined
  /**
   * Stop after this many differences (a rewritten endpoint can differ everywhere).
   * @default 100
   */
  readonly maxDifferences?: number | undefined
}

const noPatterns = compilePathPatterns([])

function kindOf(value: unknown): 'array' | 'object' | 'scalar' {
  if (Array.isArray(value)) return 'array'
  return typeof value === 'object' && value !== null ? 'object' : 'scalar'
}

/**
 * The differences between two parsed JSON documents, each with its JSON-pointer path: values
 * that differ, members or elements present on one side only (the other side `undefined`), and
 * nodes whose type differs (reported once, at that node). Arrays are compared by index.
 *
 * @example
 * ```ts
 * diffJson({ id: 1, tags: ['a'] }, { id: 2, tags: ['a', 'b'] })
 * // [{ path: '/id', primary: 1, shadow: 2 }, { path: '/tags/1', primary: undefined, shadow: 'b' }]
 * ```
 */
export function diffJson(
  primary: unknown,
  shadow: unknown,
  options: DiffJsonOptions = {},
): Difference[] {
  const ignore = options.ignore ?? noPatterns
  const max = options.maxDifferences ?? 100
  const out: Difference[] = []
  const path: string[] = []
  const walk = (a: unknown, b: unknown): void => {
    if (out.length >= max) return
    if (!ignore.empty && ignore.matches(path)) return
    const kind = kindOf(a)
    if (a === undefined || b === undefined || kind !== kindOf(b)) {
      if (a !== b) out.push({ path: toPointer(path), primary: a, shadow: b })
      return
    }
    if (kind === 'scalar') {
      if (a !== b) out.push({ path: toPointer(path), primary: a, shadow: b })
      return
    }
    if (kind === 'array') {
      const x = a as readonly unknown[]
      const y = b as readonly unknown[]
      const n = Math.max(x.length, y.length)
      for (let i = 0; i < n && out.length < max; i++) {
        path.push(String(i))
        walk(x[i], y[i])
        path.pop()
      }
      return
    }
    const x = a as Record<string, unknown>
    const y = b as Record<string, unknown>
    for (const key of Object.keys(x)) {
      path.push(key)
      walk(x[key], Object.hasOwn(y, key) ? y[key] : undefined)
      path.pop()
    }
    for (const key of Object.keys(y)) {
      if (Object.hasOwn(x, key)) continue
      path.push(key)
      walk(undefined, y[key])
      path.pop()
    }
  }
  walk(primary, shadow)
  return out
}

/**
 * Response headers never compared: they differ between any two servers or any two calls
 * (dates, connection management, sizes that follow the body, tracing ids).
 */
export const defaultIgnoredHeaders: readonly string[] = [
  'date',
  'server',
  'connection',
  'keep-alive',
  'transfer-encoding',
  'content-length',
  'etag',
  'last-modified',
  'expires',
  'age',
  'via',
  'vary',
  'x-powered-by',
  'x-request-id',
  'x-response-time',
  'x-runtime',
  'set-cookie',
  'idempotent-replayed',
]

/** Options of {@link compareResponses}. */
export interface CompareResponsesOptions {
  /**
   * JSON body subtrees left out (patterns as in {@link compilePathPatterns}).
   * @default no patterns
   */
  readonly ignoreFields?: PathPatterns | undefined
  /**
   * Header names (lower case) left out, on top of {@link defaultIgnoredHeaders}.
   * @default []
   */
  readonly ignoreHeaders?: ReadonlySet<string> | undefined
  /**
   * Most differences reported per comparison.
   * @default 100
   */
  readonly maxDifferences?: number | undefined
}

function headerValue(value: string | readonly string[] | undefined): string | undefined {
  if (value === undefined) return undefined
  return typeof value === 'string' ? value : value.join(', ')
}

const defaultIgnoredHeaderSet = new Set(defaultIgnoredHeaders)

function lowerCased(headers: Readonly<Record<string, string | string[]>>): Map<string, string> {
  const out = new Map<string, string>()
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase()
    const text = headerValue(value) as string
    const seen = out.get(lower)
    out.set(lower, seen === undefined ? text : `${seen}, ${text}`)
  }
  return out
}

function isJsonType(contentType: string | undefined): boolean {
  return /[/+]json\b/.test(contentType?.toLowerCase() ?? '')
}

function parseJson(body: Buffer): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(body.toString('utf8')) }
  } catch {
    return { ok: false }
  }
}

/**
 * Compares two captured responses: the status, every header except the ignored ones, and the
 * body (JSON field by field when either side says it is JSON and both parse, else byte for
 * byte as one `body` difference).
 */
export function compareResponses(
  primary: CapturedResponse,
  shadow: CapturedResponse,
  options: CompareResponsesOptions = {},
): Difference[] {
  const max = options.maxDifferences ?? 100
  const out: Difference[] = []
  if (primary.status !== shadow.status) {
    out.push({ path: 'status', primary: primary.status, shadow: shadow.status })
  }
  const a = lowerCased(primary.headers)
  const b = lowerCased(shadow.headers)
  for (const name of new Set([...a.keys(), ...b.keys()])) {
    if (defaultIgnoredHeaderSet.has(name) || options.ignoreHeaders?.has(name)) continue
    if (a.get(name) !== b.get(name)) {
      out.push({ path: `header ${name}`, primary: a.get(name), shadow: b.get(name) })
    }
  }
  if (primary.body.equals(shadow.body)) return out
  if (isJsonType(a.get('content-type')) || isJsonType(b.get('content-type'))) {
    const a = parseJson(primary.body)
    const b = parseJson(shadow.body)
    if (a.ok && b.ok) {
      const left = Math.max(0, max - out.length)
      const ignore = options.ignoreFields
      out.push(
        ...diffJson(a.value, b.value, {
          maxDifferences: left,
          ...(ignore === undefined ? {} : { ignore }),
        }),
      )
      return out
    }
  }
  out.push({ path: 'body', primary: primary.body, shadow: shadow.body })
  return out
}

/**
 * Removes the differences at or below a noisy path (a path seen to differ between two calls to
 * the same primary: timestamps, random ids).
 */
export function withoutNoise(
  differences: readonly Difference[],
  noise: ReadonlySet<string>,
): Difference[] {
  if (noise.size === 0) return [...differences]
  return differences.filter((d) => {
    if (noise.has(d.path)) return false
    if (!d.path.startsWith('/')) return true
    // Every ancestor pointer of d.path: `/a/b/c` → `/a/b`, `/a`, `` (the whole document).
    for (let i = d.path.lastIndexOf('/'); i >= 0; i = d.path.lastIndexOf('/', i - 1)) {
      if (noise.has(d.path.slice(0, i))) return false
      if (i === 0) break
    }
    return true
  })
}

const secretHeaderNames = new Set(['authorization', 'proxy-authorization', 'cookie', 'set-cookie'])
const previewChars = 80

function preview(value: unknown): string {
  if (value === undefined) return '(absent)'
  let text: string
  if (Buffer.isBuffer(value)) {
    text = `${value.byteLength} bytes ${JSON.stringify(value.subarray(0, previewChars).toString('utf8'))}`
  } else {
    text = JSON.stringify(value) ?? String(value)
  }
  return text.length > previewChars ? `${text.slice(0, previewChars)}…` : text
}

/**
 * Renders a difference as `path: primary → shadow` for logs and the admin API, with values cut
 * to 80 characters and secrets hidden: the values of credential and cookie headers, and of
 * JSON members whose name says they hold a secret (`password`, `token`, `apiKey`, ...).
 */
export function formatDifference(difference: Difference): string {
  const { path } = difference
  let secret = false
  if (path.startsWith('header ')) {
    const name = path.slice('header '.length)
    secret = secretHeaderNames.has(name) || isSecretKey(name)
  } else if (path.startsWith('/')) {
    const segments = pointerSegments(path)
    secret = segments.some((s) => isSecretKey(s))
  }
  if (secret) return `${path}: ${REDACTED} → ${REDACTED}`
  return `${path}: ${preview(difference.primary)} → ${preview(difference.shadow)}`
}
