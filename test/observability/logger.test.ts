import { connect } from 'node:net'
import { describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import { createJsonLogger, isSecretKey, redactSecrets } from '../../src/observability/index.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

function capture(): {
  lines: () => Record<string, unknown>[]
  raw: () => string
  write(t: string): void
} {
  let text = ''
  return {
    write(t: string) {
      text += t
    },
    raw: () => text,
    lines: () =>
      text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  }
}

describe('createJsonLogger', () => {
  it('writes one JSON object per line with level, time, msg and the fields', () => {
    const out = capture()
    const clock = new ManualClock(Date.UTC(2024, 0, 2, 3, 4, 5, 678))
    const log = createJsonLogger({ output: out, clock, fields: { service: 'relay' } })
    log.info('started', { batchSize: 256, nested: { ok: true } })
    log.child({ relayId: 'r1' }).warn('slow', { ms: 12 })
    expect(out.raw().endsWith('\n')).toBe(true)
    expect(out.raw().split('\n')).toHaveLength(3)
    const [first, second] = out.lines()
    expect(Object.keys(first!).slice(0, 3)).toEqual(['level', 'time', 'msg'])
    expect(first).toEqual({
      level: 'info',
      time: '2024-01-02T03:04:05.678Z',
      msg: 'started',
      service: 'relay',
      batchSize: 256,
      nested: { ok: true },
    })
    expect(second).toMatchObject({
      level: 'warn',
      msg: 'slow',
      service: 'relay',
      relayId: 'r1',
      ms: 12,
    })
  })

  it('drops lines below the level, and nothing passes "silent"', () => {
    const out = capture()
    const log = createJsonLogger({ output: out, level: 'warn' })
    log.debug('d')
    log.info('i')
    log.warn('w')
    log.error('e')
    expect(out.lines().map((l) => l.level)).toEqual(['warn', 'error'])
    expect(log.isLevelEnabled('info')).toBe(false)
    const silent = capture()
    createJsonLogger({ output: silent, level: 'silent' }).error('x')
    expect(silent.raw()).toBe('')
    expect(() => createJsonLogger({ level: 'loud' as 'info' })).toThrow(/logger.level/)
  })

  it('never writes secrets: secret-named fields at any depth and credentials inside strings', () => {
    const out = capture()
    const log = createJsonLogger({ output: out, redactKeys: ['x-internal'] })
    const error = new Error('connect to postgres://app:s3cr3t-pw@db:5432/app failed')
    log.error('boom', {
      db: 'postgres://app:s3cr3t-pw@db:5432/app',
      broker: 'amqp://guest:gu3st-pw@127.0.0.1:5672/',
      nats: 'nats://t0ken-value@127.0.0.1:4222',
      conninfo: 'host=db user=app password=pa55-word dbname=app',
      query: 'https://api.example.com/x?api_key=k3y-value&limit=5',
      config: {
        password: 'pa55-word',
        webhookSecret: 'wh-s3cret',
        headers: {
          Authorization: 'Bearer abcdefghijkl',
          'X-Api-Key': 'k3y-value',
          cookie: 'sid=1',
        },
        list: [{ accessToken: 't0ken-value' }],
        'X-Internal': 'internal-value',
        tokens: 3,
        secretFile: '/run/secrets/hook',
      },
      text: 'sent Authorization: Bearer abcdefghijkl',
      error,
    })
    const raw = out.raw()
    for (const secret of [
      's3cr3t-pw',
      'gu3st-pw',
      't0ken-value',
      'pa55-word',
      'k3y-value',
      'wh-s3cret',
      'abcdefghijkl',
      'internal-value',
      'sid=1',
    ]) {
      expect(raw).not.toContain(secret)
    }
    const [line] = out.lines()
    const config = line!.config as Record<string, unknown>
    expect(line!.db).toBe('postgres://app:***@db:5432/app')
    expect(line!.nats).toBe('nats://***@127.0.0.1:4222')
    expect(line!.conninfo).toBe('host=db user=app password=*** dbname=app')
    expect(line!.query).toBe('https://api.example.com/x?api_key=***&limit=5')
    expect(config.password).toBe('[redacted]')
    expect(config['X-Internal']).toBe('[redacted]')
    // Names that only contain a secret word keep their (harmless) values.
    expect(config.tokens).toBe(3)
    expect(config.secretFile).toBe('/run/secrets/hook')
    expect((line!.error as Record<string, unknown>).message).toBe(
      'connect to postgres://app:***@db:5432/app failed',
    )
  })

  it('masks a credential before cutting a long string short, so no part of it is written', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    // The cut (8,192 characters) falls inside the password: cut first, the '@' that marks
    // the URL's credentials is gone, and the password's first characters would be written.
    const url = 'postgres://app:supersecretpw@db:5432/app'
    const long = `${'x'.repeat(8_192 - 20)} ${url}`
    const error = new Error(long)
    log.error(long, { text: long, error })
    const raw = out.raw()
    expect(raw).not.toContain('supe')
    const [line] = out.lines()
    expect(String(line!.msg)).toMatch(/ postgres:\/\/app:\*\*\*@\S*…$/)
    expect(String(line!.text)).toMatch(/ postgres:\/\/app:\*\*\*@\S*…$/)
  })

  it('cuts a long string short between characters, never inside a surrogate pair', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    // One ASCII character, then emoji (two UTF-16 units each): the 8,192nd unit is the first
    // half of an emoji. Cut there, the line would hold a lone surrogate (`\ud83d`), which
    // strict JSON readers (Rust's serde_json, so Vector) refuse, dropping the whole line.
    const long = `a${'😀'.repeat(5_000)}`
    log.info(long, { text: long })
    const raw = out.raw()
    expect(raw).not.toMatch(/\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])/i)
    const [line] = out.lines()
    expect(line!.msg).toBe(`a${'😀'.repeat(4_095)}…`)
    expect(line!.text).toBe(line!.msg)
  })

  it('serializes errors with code, cause and stack (no stack for coded breakwater errors)', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    const cause = Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })
    log.error('failed', {
      error: new BreakwaterError('BROKER_UNAVAILABLE', 'nats down', { cause, retryable: true }),
    })
    const error = out.lines()[0]!.error as Record<string, unknown>
    expect(error).toMatchObject({
      type: 'BreakwaterError',
      message: 'nats down',
      code: 'BROKER_UNAVAILABLE',
    })
    expect(error.stack).toBeUndefined()
    expect(error.cause).toMatchObject({ type: 'Error', message: 'refused', code: 'ECONNREFUSED' })
    expect(typeof (error.cause as Record<string, unknown>).stack).toBe('string')
  })

  it("keeps a system error's syscall, address, port and path, and a database error's detail", async () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    // A real refused connect: port 1 on loopback has no listener here.
    const refused = await new Promise<Error>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port: 1 })
      socket.on('error', resolve)
    })
    // pg's DatabaseError carries these fields, all strings; the constraint says which rule broke.
    const unique = Object.assign(new Error('duplicate key value violates unique constraint'), {
      code: '23505',
      detail: 'Key (email)=(ann@example.com) already exists.',
      schema: 'public',
      table: 'users',
      constraint: 'users_email_key',
      hint: undefined,
      severity: 'ERROR',
    })
    log.error('failed', { error: refused, db: unique })
    const line = out.lines()[0]!
    expect(line.error).toMatchObject({
      code: 'ECONNREFUSED',
      errno: expect.any(Number),
      syscall: 'connect',
      address: '127.0.0.1',
      port: 1,
    })
    expect(line.db).toMatchObject({
      code: '23505',
      detail: 'Key (email)=(ann@example.com) already exists.',
      schema: 'public',
      table: 'users',
      constraint: 'users_email_key',
      severity: 'ERROR',
    })
    expect(line.db).not.toHaveProperty('hint')
  })

  it('masks secrets in the diagnostic fields of an error, and writes only their text or numbers', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    const error = Object.assign(new Error('bad'), {
      detail: 'connect to postgres://app:hunter2@db/x failed',
      path: { secret: 'x' },
    })
    log.error('failed', { error })
    const written = out.lines()[0]!.error as Record<string, unknown>
    expect(out.raw()).not.toContain('hunter2')
    expect(written.detail).toContain('postgres://app:')
    expect(written).not.toHaveProperty('path')
  })

  it('never throws on circular, deep, odd or reserved-name values', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    const circular: Record<string, unknown> = { name: 'loop' }
    circular.self = circular
    let deep: Record<string, unknown> = {}
    const root = deep
    for (let i = 0; i < 20; i++) {
      deep.next = {}
      deep = deep.next as Record<string, unknown>
    }
    log.info('odd', {
      circular,
      root,
      big: 10n,
      fn: function named() {},
      bytes: new Uint8Array(5),
      when: new Date(0),
      map: new Map<string, unknown>([
        ['password', 'x'],
        ['a', 1],
      ]),
      inf: Number.POSITIVE_INFINITY,
      msg: 'field named msg',
      level: 'field named level',
    })
    const line = out.lines()[0]!
    expect(line.msg).toBe('odd')
    expect(line.level).toBe('info')
    expect(line['fields.msg']).toBe('field named msg')
    expect(line['fields.level']).toBe('field named level')
    expect(line.circular).toEqual({ name: 'loop', self: '[circular]' })
    expect(JSON.stringify(line.root)).toContain('[too deep]')
    expect(line.big).toBe('10')
    expect(line.fn).toBe('[function named]')
    expect(line.bytes).toBe('[5 bytes]')
    expect(line.when).toBe('1970-01-01T00:00:00.000Z')
    expect(line.map).toEqual({ password: '[redacted]', a: 1 })
    expect(line.inf).toBe('Infinity')
  })

  it('never throws on values that throw when read: toJSON, getters, revoked proxies, msg', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    const revocable = Proxy.revocable({}, {})
    revocable.revoke()
    const badMessage = new Error('m')
    Object.defineProperty(badMessage, 'message', {
      get() {
        throw new Error('no message')
      },
    })
    log.info('values', {
      json: {
        toJSON() {
          throw new Error('boom')
        },
      },
      getter: {
        get x() {
          throw new Error('getter')
        },
      },
      revoked: revocable.proxy,
      error: badMessage,
      fine: 1,
    })
    const line = out.lines()[0]!
    expect(line.msg).toBe('values')
    expect(line.json).toBe('[unserializable]')
    expect(line.getter).toBe('[unserializable]')
    expect(line.revoked).toBe('[unserializable]')
    expect(line.error).toBe('[unserializable]')
    expect(line.fine).toBe(1)

    // A field whose getter throws loses only its value; an object whose keys cannot even be
    // listed (a revoked proxy) is one logError.
    const fields = {
      get x(): string {
        throw new Error('top-level getter')
      },
      y: 2,
    }
    log.warn('field', fields)
    log.warn('fields', revocable.proxy)
    log.error({
      toString() {
        throw new Error('msg')
      },
    } as unknown as string)
    const [, second, third, fourth] = out.lines()
    expect(second).toMatchObject({ level: 'warn', msg: 'field', x: '[unserializable]', y: 2 })
    expect(third).toMatchObject({ level: 'warn', msg: 'fields', logError: 'unserializable' })
    expect(fourth).toMatchObject({ level: 'error', msg: '[unserializable]' })
  })

  it('makes a child of fields that throw when read, each such field written as [unserializable]', () => {
    const out = capture()
    const log = createJsonLogger({ output: out, fields: { service: 'relay' } })
    const getter = {
      ok: 1,
      get bad(): string {
        throw new Error('getter')
      },
      after: 'x',
    }
    const trapped = new Proxy(
      { a: 1, b: 2 },
      {
        get(target, key) {
          if (key === 'b') throw new Error('get trap')
          return Reflect.get(target, key)
        },
      },
    )
    const unlisted = new Proxy(
      {},
      {
        ownKeys() {
          throw new Error('ownKeys trap')
        },
      },
    )
    const revocable = Proxy.revocable({}, {})
    revocable.revoke()
    // A secret-named field stays a secret whatever its getter does.
    const secret = {
      get password(): string {
        throw new Error('secret getter')
      },
    }
    log.child(getter).info('getter', { more: true })
    log.child(trapped).child({ c: 3 }).info('trap')
    log.child(unlisted).info('unlisted')
    log.child(revocable.proxy).info('revoked')
    log.child(secret).info('secret')
    expect(out.lines()).toMatchObject([
      { msg: 'getter', service: 'relay', ok: 1, bad: '[unserializable]', after: 'x', more: true },
      { msg: 'trap', a: 1, b: '[unserializable]', c: 3 },
      { msg: 'unlisted', service: 'relay', logError: 'unserializable' },
      { msg: 'revoked', service: 'relay', logError: 'unserializable' },
      { msg: 'secret', password: '[redacted]' },
    ])
    // Not an object at all is still the caller's mistake.
    expect(() => log.child(null as unknown as Record<string, unknown>)).toThrow(/fields/)
  })
})

describe('redaction helpers', () => {
  it('recognises secret field names in any spelling, not words inside other names', () => {
    for (const key of [
      'password',
      'DB_PASSWORD',
      'clientSecret',
      'x-api-key',
      'Authorization',
      'set-cookie',
      'accessToken',
      'privateKey',
    ])
      expect(isSecretKey(key), key).toBe(true)
    for (const key of ['tokens', 'secretFile', 'passwordPolicy', 'key', 'topic'])
      expect(isSecretKey(key), key).toBe(false)
  })

  it('takes a secret key for a secret: secretKey, secret_key, secretAccessKey', () => {
    // The secret half of a key pair is named for the word secret, then key: AWS's
    // secretAccessKey (AWS_SECRET_ACCESS_KEY), S3 and MinIO clients' secretKey, Stripe's and
    // Django's SECRET_KEY. Their public halves (accessKeyId, publicKey) are no secrets.
    for (const key of ['secretKey', 'SECRET_KEY', 'secretAccessKey', 'AWS_SECRET_ACCESS_KEY'])
      expect(isSecretKey(key), key).toBe(true)
    for (const key of ['accessKeyId', 'publicKey', 'secretKeyFile'])
      expect(isSecretKey(key), key).toBe(false)
    const out = capture()
    const log = createJsonLogger({ output: out })
    const credentials = {
      accessKeyId: 'AKIAEXAMPLE',
      secretAccessKey: 'wJalrXUtnFEMI',
      region: 'x',
    }
    log.info('s3 client', { s3: credentials, stripe: { secret_key: 'sk_live_abc' } })
    expect(out.raw()).not.toMatch(/wJalrXUtnFEMI|sk_live_abc/)
    for (const [text, masked] of [
      ['AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI', 'AWS_SECRET_ACCESS_KEY=***'],
      ['SECRET_KEY=django-insecure-abc', 'SECRET_KEY=***'],
      ['secret_key: sk_live_abc', 'secret_key: ***'],
      ['https://h/upload?secretKey=abc&x=1', 'https://h/upload?secretKey=***&x=1'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('takes a collection of secrets for secrets: cookies, secrets, passwords, apiKeys', () => {
    // Express's and Fastify's req.cookies (and cookie-parser's signedCookies) is an object of
    // cookies by name: `sid` and `connect.sid` are not secret names, so only the collection's
    // name can tell that the session ids under it are credentials. `tokens` stays a count
    // (an LLM's max_tokens, token_count), as the test above says.
    for (const key of [
      'cookies',
      'signedCookies',
      'secrets',
      'passwords',
      'apiKeys',
      'privateKeys',
    ])
      expect(isSecretKey(key), key).toBe(true)
    const out = capture()
    const log = createJsonLogger({ output: out })
    log.info('request', {
      req: { path: '/cart', cookies: { sid: 's%3Aabc123', 'connect.sid': 's%3Adef456' } },
    })
    expect(out.raw()).not.toMatch(/abc123|def456/)
    expect(out.lines()[0]!.req).toEqual({ path: '/cart', cookies: '[redacted]' })
    expect(redactSecrets('cookies: sid=abc123; theme=dark')).toBe('cookies: ***')
  })

  it('masks key=value pairs whose key ends in a secret name, as field names are judged', () => {
    for (const [text, masked] of [
      // A value runs over blanks up to the next pair (a password may hold a space).
      ['DB_PASSWORD=hunter2 next', 'DB_PASSWORD=***'],
      ['DB_PASSWORD=hunter2 next=1', 'DB_PASSWORD=*** next=1'],
      ['PGPASSWORD=hunter2', 'PGPASSWORD=***'],
      ['export REDIS_PASSWORD="hunter 2"', 'export REDIS_PASSWORD=***'],
      ['NATS_TOKEN=t0ken&x=1', 'NATS_TOKEN=***&x=1'],
      ['x-api-key=k3y', 'x-api-key=***'],
      ['AWS_SECRET=abc', 'AWS_SECRET=***'],
      ['?csrf_token=abc', '?csrf_token=***'],
      ['password=pw', 'password=***'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
    // Names that only contain a secret word are not secrets (as isSecretKey says).
    for (const text of ['max_tokens=5', 'passwordPolicy=strict', 'token_count=3'])
      expect(redactSecrets(text)).toBe(text)
  })

  it('masks the credentials after an Authorization header name, whatever their scheme and case', () => {
    for (const [text, masked] of [
      ['authorization: bearer abcdefghijklmnop', 'authorization: bearer ***'],
      ['Authorization: BEARER abcdefghijklmnop', 'Authorization: BEARER ***'],
      ['proxy-authorization: basic dXNlcjpwYXNzd29yZA==', 'proxy-authorization: basic ***'],
      ['Authorization=Token t0ken-abc x', 'Authorization=Token ***'],
      ['Bearer abcdefghijklmnop', 'Bearer ***'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
    // "basic" and "bearer" elsewhere are plain words.
    const words = 'using basic authentication for the bearer instrument'
    expect(redactSecrets(words)).toBe(words)
  })

  it('masks secret-named members of JSON held in a string, as field names are judged', () => {
    expect(redactSecrets('rejected {"user":"ann","password":"hunter2"}')).toBe(
      'rejected {"user":"ann","password":"***"}',
    )
    expect(redactSecrets('{"apiKey" : "k\\"3y", "pin": 1, "accessToken":12345}')).toBe(
      '{"apiKey" : "***", "pin": 1, "accessToken":"***"}',
    )
    expect(redactSecrets('{"headers":{"Authorization":"Token abc"}}')).toBe(
      '{"headers":{"Authorization":"***"}}',
    )
    // Names that only contain a secret word are left alone, as are non-secret members.
    const plain = '{"max_tokens":5,"passwordPolicy":"strict","name":"x"}'
    expect(redactSecrets(plain)).toBe(plain)
  })

  it('masks in time linear in the text: long runs of name characters cannot stall a log call', () => {
    // A 16 KB request path of `a-a-a-...=` (what an access log line carries) took 0.6 s per
    // line when each word boundary restarted a scan to the end of the run; this input would
    // take minutes. Masking still works right after such a run.
    const run = 'a.'.repeat(200_000)
    for (const text of [
      `/${run}=x`,
      `/${'a-'.repeat(200_000)}=x`,
      `${run}@host`,
      `${run}: secret=hunter2`,
    ]) {
      const masked = redactSecrets(text)
      expect(masked.length).toBeLessThanOrEqual(text.length)
    }
    expect(redactSecrets(`${run} secret=hunter2`)).toBe(`${run} secret=***`)
    expect(redactSecrets(`${run} redis://:pw@cache`)).toBe(`${run} redis://:***@cache`)
  })

  it('masks URL passwords, including ones with an unencoded @', () => {
    expect(redactSecrets('redis://:p@ss@cache:6379/0')).toBe('redis://:***@cache:6379/0')
    expect(redactSecrets('two: nats://a:b@h1 and amqp://c:d@h2/')).toBe(
      'two: nats://a:***@h1 and amqp://c:***@h2/',
    )
    expect(redactSecrets('http://example.com/path?x=1')).toBe('http://example.com/path?x=1')
  })

  it('masks URL passwords that hold an unencoded / ? or #', () => {
    expect(redactSecrets('cannot connect to redis://:pa/ss@cache:6379/0')).toBe(
      'cannot connect to redis://:***@cache:6379/0',
    )
    expect(redactSecrets('postgres://app:p?w#x@db/app failed')).toBe(
      'postgres://app:***@db/app failed',
    )
    // A URL without credentials keeps its path, even with an @ in it.
    expect(redactSecrets('see https://host/users/@me')).toBe('see https://host/users/@me')
    expect(redactSecrets('https://host?mail=a@b')).toBe('https://host?mail=a@b')
    expect(redactSecrets('"nats://s3cret@h:4222"')).toBe('"nats://***@h:4222"')
  })
})
