-- svc-meta uses capstan_meta (POSTGRES_DB); svc-auth's API keys get a
-- database of their own.
CREATE DATABASE capstan_auth OWNER capstan;
