import { readdirSync, readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { errorCodes } from '../../src/core/error-codes.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { statusFor } from '../../src/proxy/upstream/problems.js'

const docs = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8')

/** The text of a code's section in docs/errors.md, up to the next heading. */
function section(code: string): string {
  const start = docs.indexOf(`\n## ${code}\n`)
  if (start < 0) return ''
  const end = docs.indexOf('\n## ', start + 1)
  return docs.slice(start, end < 0 ? undefined : end)
}

/** Every TypeScript source under src/, as one text per file. */
function sources(dir = new URL('../../src/', import.meta.url)): string[] {
  const texts: string[] = []
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const url = new URL(entry.isDirectory() ? `${entry.name}/` : entry.name, dir)
    if (entry.isDirectory()) texts.push(...sources(url))
    else if (entry.name.endsWith('.ts') && entry.name !== 'error-codes.ts')
      texts.push(readFileSync(url, 'utf8'))
  }
  return texts
}

describe('error codes', () => {
  it('docs/errors.md documents exactly the codes in error-codes.ts', () => {
    const documented = [...docs.matchAll(/^## ([A-Z_]+)$/gm)].map((m) => m[1]).sort()
    expect(documented).toEqual(Object.keys(errorCodes).sort())
  })

  it('every registered code is used by the code, so none is documented but dead', () => {
    const text = sources().join('\n')
    const dead = Object.keys(errorCodes).filter((code) => !text.includes(`'${code}'`))
    expect(dead).toEqual([])
  })

  it('every code the proxy answers a client with is registered and documented', () => {
    // Problem responses pass their code as a plain string next to the status
    // (`sendProblem(res, 404, 'ROUTE_NOT_FOUND', ...)`, `new AdminProblem(401, 'UNAUTHORIZED', ...)`),
    // so the type checker does not hold them to the registry; this does.
    const answered = new Set<string>()
    for (const text of sources()) {
      for (const m of text.matchAll(/\b[1-5]\d\d,\s*'([A-Z][A-Z0-9_]+)'/g))
        answered.add(m[1] as string)
    }
    expect(answered.size).toBeGreaterThan(10)
    expect([...answered].filter((code) => !(code in errorCodes)).sort()).toEqual([])
  })

  it('docs/errors.md gives the status the proxy answers with for each upstream failure', () => {
    // The proxy answers these codes for a service it could not reach (statusFor in
    // src/proxy/upstream/problems.ts); a reader must find the status in the code's own section.
    const missing = Object.entries(statusFor)
      .filter(([code, status]) => !section(code).includes(`\`${status}\``))
      .map(([code, status]) => `${code} ${status}`)
    expect(missing).toEqual([])
  })

  it('brands errors so they are recognised without instanceof', () => {
    const error = new InvalidOptionError('retry.maxAttempts', 'an integer >= 1', 0)
    expect(BreakwaterError.is(error)).toBe(true)
    expect(BreakwaterError.is(new Error('x'))).toBe(false)
    expect(BreakwaterError.is({ code: 'TIMEOUT' })).toBe(false)
    expect(error.message).toBe('retry.maxAttempts: expected an integer >= 1, got 0')
    expect(error.code).toBe('INVALID_OPTION')
  })
})
