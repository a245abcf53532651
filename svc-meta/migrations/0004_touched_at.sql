-- When a manifest was last pushed (a push of one already stored renews it;
-- `created_at` stays its first push, retention's push time): retention
-- spares an untagged manifest pushed again within its delay, such as the
-- platform manifest of an index about to be pushed. NULL: `created_at`.
ALTER TABLE manifests ADD COLUMN touched_at BIGINT;
