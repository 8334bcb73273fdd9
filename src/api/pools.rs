//! `GET /pools`, `GET`, `PUT` and `DELETE /pools/:name`.

use super::answer::Answer;
use super::error::ApiError;
use crate::service::pools::spec::PoolSpec;
use crate::service::pools::view::Declared;
use crate::service::Service;

pub fn list(service: &Service) -> Answer {
    Answer::json_value(200, &service.pools())
}

pub fn get(service: &Service, name: &str) -> Result<Answer, ApiError> {
    Ok(Answer::json_value(200, &service.pool(name)?))
}

/// 201 when the pool is new, 200 when its spec changed.
pub fn put(service: &Service, name: &str, spec: PoolSpec) -> Result<Answer, ApiError> {
    Ok(match service.put_pool(name, spec)? {
        Declared::Created(view) => Answer::json_value(201, &view),
        Declared::Updated(view) => Answer::json_value(200, &view),
    })
}

pub fn delete(service: &Service, name: &str) -> Result<Answer, ApiError> {
    service.delete_pool(name)?;
    Ok(Answer::empty(204))
}
