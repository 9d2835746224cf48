// `sqlite://X/Y` reads as a URL with host X and path /Y: it named the relative file X/Y, so
// `sqlite://db-server/var/app.db` quietly made ./db-server/var/app.db. It is refused now.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { parseDatabaseUrl } from '../../src/stores/open.js'

/** The error parseDatabaseUrl throws for `url`. */
async function refusal(url: string): Promise<InvalidOptionError> {
  const thrown: unknown = await Promise.resolve()
    .then(() => parseDatabaseUrl(url))
    .catch((e: unknown) => e)
  expect(thrown).toBeInstanceOf(InvalidOptionError)
  return thrown as InvalidOptionError
}

describe('parseDatabaseUrl: sqlite:// with a host part', () => {
  it.each(['sqlite://host/abs/path.db', 'sqlite://localhost/var/app.db', 'SQLITE://h/x.db'])(
    'refuses %j, naming it and the forms to write instead',
    async (url) => {
      const error = await refusal(url)
      expect(error.code).toBe('INVALID_OPTION')
      expect(error.option).toBe('url')
      expect(error.value).toBe(url)
      expect(error.message).toContain(JSON.stringify(url))
      expect(error.message).toContain('sqlite:///abs/path')
      expect(error.message).toContain('sqlite:./rel/path')
    },
  )

  it.each([
    ['sqlite://rel.db', 'rel.db'],
    ['sqlite:///abs/path.db', '/abs/path.db'],
    ['sqlite://:memory:', ':memory:'],
    ['sqlite:./rel/path.db', './rel/path.db'],
    ['sqlite:rel/path.db', 'rel/path.db'],
  ])('still takes %j', (url, filename) => {
    expect(parseDatabaseUrl(url)).toEqual({ dialect: 'sqlite', filename })
  })

  // The home-folder check keeps its own, more precise message.
  it('says ~ is not expanded for sqlite://~/app.db', async () => {
    expect((await refusal('sqlite://~/app.db')).message).toMatch(/~ is not expanded/)
  })
})
