// An OpenID Connect provider for Capstan's end-to-end tests: node's
// oidc-provider with its development login and consent pages, one client
// (capstan / capstan-secret) redirecting to the URLs in $REDIRECT_URI
// (comma-separated), and accounts whose groups are `devs` for alice and
// `ops` for everyone else. It also answers GitHub's two REST calls a login
// makes (`/api/user`, `/api/user/orgs`, with the provider's access tokens),
// so the same real OAuth server stands in for GitHub Enterprise.
// Listens on 127.0.0.1:$PORT and prints "ready <issuer>" once it does.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'capstan',
    client_secret: 'capstan-secret',
    redirect_uris: process.env.REDIRECT_URI.split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username'],
    groups: ['groups'],
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.org`,
          email_verified: true,
          preferred_username: id,
          groups: id === 'alice' ? ['devs'] : ['ops'],
        };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['capstan-test-cookie-key'] },
});
provider.proxy = false;
provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/api/user')) return next();
  const token = (ctx.get('authorization') || '').replace(/^(Bearer|token) /i, '');
  const at = token && await provider.AccessToken.find(token);
  if (!at) { ctx.status = 401; ctx.body = { message: 'Bad credentials' }; return; }
  if (ctx.path === '/api/user') ctx.body = { login: at.accountId, id: 1 };
  else if (ctx.path === '/api/user/orgs') ctx.body = [{ login: at.accountId === 'alice' ? 'devs' : 'ops' }];
  else ctx.status = 404;
});
provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
